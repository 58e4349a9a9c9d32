package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// Sizes of the CloudEvents-on-Kafka scenario.
const (
	ceBulkEventCount   = 100_000
	ceBulkBatchCount   = 500
	ceRateEventsPerSec = 1_000
	ceRateDurationSec  = 5
	cePartitionCount   = 6
	ceKeyCount         = 200
	ceTimeoutSec       = 120
)

// runCloudEventsKafka measures the binding over the embedded broker on TCP: bulk throughput produced
// and consumed, and end-to-end latency (publish call to consumer receipt) at a steady 1,000 events/s.
func runCloudEventsKafka(ctx context.Context) ([]figure, error) {
	ctx, cancel := context.WithTimeout(ctx, ceTimeoutSec*time.Second)
	defer cancel()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	brokers := []string{b.Addr()}
	topics := []eventing.Topic{{Name: "bench.bulk", Partitions: cePartitionCount}, {Name: "bench.steady", Partitions: cePartitionCount}}
	if err := broker.EnsureTopics(ctx, brokers, topics); err != nil {
		return nil, err
	}
	bulk, err := ceBulk(ctx, brokers)
	if err != nil {
		return nil, err
	}
	steady, err := ceSteady(ctx, brokers)
	if err != nil {
		return nil, err
	}
	return append(bulk, steady...), nil
}

func benchEvent(n int) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(strconv.Itoa(n))
	e.SetType("kawase.bench.v1")
	e.SetSource("/kawase/bench")
	e.SetTime(time.Now())
	e.SetExtension("partitionkey", "acct-"+strconv.Itoa(n%ceKeyCount))
	_ = e.SetData("application/json", []byte(`{"bid":"151.420","ask":"151.425"}`))
	return e
}

func ceBulk(ctx context.Context, brokers []string) ([]figure, error) {
	w := cekafka.NewWriter(brokers, "bench.bulk")
	defer w.Close()
	start := time.Now()
	for n := 0; n < ceBulkEventCount; n += ceBulkBatchCount {
		batch := make([]cloudevents.Event, 0, ceBulkBatchCount)
		for i := n; i < n+ceBulkBatchCount; i++ {
			batch = append(batch, benchEvent(i))
		}
		if err := cekafka.Publish(ctx, w, batch...); err != nil {
			return nil, err
		}
	}
	produced := time.Since(start)
	r := cekafka.NewGroupReader(brokers, "bench.bulk", "bench-bulk")
	defer r.Close()
	start = time.Now()
	for range ceBulkEventCount {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("bulk consume: %w", err)
		}
		if _, err := cekafka.FromMessage(m); err != nil {
			return nil, err
		}
	}
	consumed := time.Since(start)
	return []figure{
		{Name: "CloudEvents→Kafka produce (batches of 500, acks=all)", Value: perSec(ceBulkEventCount, produced), Unit: "events/s"},
		{Name: "Kafka→CloudEvents consume (consumer group, decode)", Value: perSec(ceBulkEventCount, consumed), Unit: "events/s"},
	}, nil
}

func ceSteady(ctx context.Context, brokers []string) ([]figure, error) {
	w := cekafka.NewWriter(brokers, "bench.steady")
	defer w.Close()
	r := cekafka.NewGroupReader(brokers, "bench.steady", "bench-steady")
	defer r.Close()
	total := ceRateEventsPerSec * ceRateDurationSec
	lat := make(chan time.Duration, total)
	errc := make(chan error, 1)
	go func() {
		for range total {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				errc <- err
				return
			}
			e, err := cekafka.FromMessage(m)
			if err != nil {
				errc <- err
				return
			}
			lat <- time.Since(e.Time())
		}
		errc <- nil
	}()
	tick := time.NewTicker(time.Second / ceRateEventsPerSec)
	defer tick.Stop()
	for n := range total {
		<-tick.C
		if err := cekafka.Publish(ctx, w, benchEvent(n)); err != nil {
			return nil, err
		}
	}
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("steady consume: %w", err)
	}
	close(lat)
	var ds []time.Duration
	for d := range lat {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return []figure{
		{Name: "CloudEvents over Kafka end-to-end latency p50 at 1,000 events/s", Value: ms(ds[len(ds)/2]), Unit: "ms"},
		{Name: "CloudEvents over Kafka end-to-end latency p99 at 1,000 events/s", Value: ms(ds[len(ds)*99/100]), Unit: "ms"},
	}, nil
}

func perSec(n int, d time.Duration) string {
	return strconv.FormatInt(int64(float64(n)/d.Seconds()), 10)
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64)
}
