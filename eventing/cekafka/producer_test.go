package cekafka_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// TestProducerKeepsPerKeyOrderAcrossTopics writes keyed events to two topics from many goroutines at
// once (so calls share produce requests) and reads every partition back: each key's events are in one
// partition, in the order they were written, on the partition a kafka.Writer from NewWriter picks for
// the key, and the CloudEvents read back are the ones written.
func TestProducerKeepsPerKeyOrderAcrossTopics(t *testing.T) {
	addr := startBroker(t, "", eventing.Topic{Name: "t.p1", Partitions: 6}, eventing.Topic{Name: "t.p2", Partitions: 3},
		eventing.Topic{Name: "t.w", Partitions: 6})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	p := cekafka.NewProducer([]string{addr})
	defer p.Close()
	const keys, perKey = 12, 30
	var wg sync.WaitGroup
	errs := make(chan error, keys)
	for k := range keys {
		key := fmt.Sprintf("acct-%d", k)
		wg.Go(func() {
			for n := range perKey {
				topic := "t.p1"
				if k%2 == 1 {
					topic = "t.p2"
				}
				if err := p.Publish(ctx, topic, event(t, key, n)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	w := cekafka.NewWriter([]string{addr}, "t.w")
	defer w.Close()
	var evs []cloudevents.Event
	for k := 0; k < keys; k += 2 {
		evs = append(evs, event(t, fmt.Sprintf("acct-%d", k), 0))
	}
	if err := cekafka.Publish(ctx, w, evs...); err != nil {
		t.Fatal(err)
	}
	writerPartition := map[string]int{}
	for _, m := range readAll(ctx, t, addr, "t.w", 6) {
		writerPartition[string(m.Key)] = m.Partition
	}
	for topic, parts := range map[string]int{"t.p1": 6, "t.p2": 3} {
		next := map[string]int{}
		partition := map[string]int{}
		for _, m := range readAll(ctx, t, addr, topic, parts) {
			e, err := cekafka.FromMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			key := string(m.Key)
			if want := fmt.Sprintf("%s-%d", key, next[key]); e.ID() != want || eventing.PartitionKey(e) != key {
				t.Fatalf("%s: read %s (key %s), want %s", topic, e.ID(), eventing.PartitionKey(e), want)
			}
			next[key]++
			if p, ok := partition[key]; ok && p != m.Partition {
				t.Fatalf("%s: key %s in partitions %d and %d", topic, key, p, m.Partition)
			}
			partition[key] = m.Partition
			if wp, ok := writerPartition[key]; ok && topic == "t.p1" && wp != m.Partition {
				t.Errorf("key %s: producer partition %d, writer partition %d", key, m.Partition, wp)
			}
		}
		if len(next) != keys/2 {
			t.Fatalf("%s: %d keys read, want %d", topic, len(next), keys/2)
		}
		for key, n := range next {
			if n != perKey {
				t.Errorf("%s: key %s has %d events, want %d", topic, key, n, perKey)
			}
		}
	}
}

// readAll reads every record of the partitions of topic, partition by partition.
func readAll(ctx context.Context, t *testing.T, addr, topic string, partitions int) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for pt := range partitions {
		conn, err := kafka.DialLeader(ctx, "tcp", addr, topic, pt)
		if err != nil {
			t.Fatal(err)
		}
		last, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		// A short MaxWait: closing a reader waits for its outstanding fetch.
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: pt, MaxWait: 200 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
			if m.Offset == last-1 {
				break
			}
		}
		r.Close()
	}
	return out
}

// TestProducerReportsAnUnknownTopic: a record for a topic the cluster does not have fails after the
// retries instead of waiting forever.
func TestProducerReportsAnUnknownTopic(t *testing.T) {
	addr := startBroker(t, "", eventing.Topic{Name: "t.known", Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	p := cekafka.NewProducer([]string{addr})
	defer p.Close()
	if err := p.Publish(ctx, "t.unknown", event(t, "k", 1)); err == nil {
		t.Fatal("publishing to an unknown topic succeeded")
	}
	if err := p.Publish(ctx, "t.known", event(t, "k", 2)); err != nil {
		t.Fatalf("a known topic after the failure: %v", err)
	}
}
