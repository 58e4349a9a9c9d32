package cekafka_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// partitionLog collects what ReadPartitions delivers, per partition.
type partitionLog struct {
	mu      sync.Mutex
	records map[int][]kafka.Message
	calls   int
	errs    []error
}

func (l *partitionLog) deliver(_ context.Context, batch []kafka.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	for _, m := range batch {
		l.records[m.Partition] = append(l.records[m.Partition], m)
	}
}

func (l *partitionLog) onError(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *partitionLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, rs := range l.records {
		n += len(rs)
	}
	return n
}

// startReading runs ReadPartitions until the returned stop is called; stop waits for it to return.
func startReading(ctx context.Context, cfg cekafka.PartitionsConfig, from map[int]int64, deliver func(context.Context, []kafka.Message)) (stop func()) {
	readCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cekafka.ReadPartitions(readCtx, cfg, from, deliver)
	}()
	return func() {
		cancel()
		<-done
	}
}

// topicWithWriter starts a broker with one topic and returns its address, a context bounded by
// testTimeout and a writer to the topic, each released when the test ends.
func topicWithWriter(t *testing.T, topic string, partitions int) (string, context.Context, *kafka.Writer) {
	t.Helper()
	addr := startBroker(t, "", eventing.Topic{Name: topic, Partitions: partitions})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	w := cekafka.NewWriter([]string{addr}, topic)
	t.Cleanup(func() { _ = w.Close() })
	return addr, ctx, w
}

// waitFor polls until cond holds or the test's time runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReadPartitionsDeliversEveryPartitionInOrder reads six partitions through the real broker over
// TCP, from the start, from an explicit offset and from the end, and checks that every record comes
// back once, in offset order, with its key, headers and data intact.
func TestReadPartitionsDeliversEveryPartitionInOrder(t *testing.T) {
	const partitions, perKey = 6, 30
	addr, ctx, w := topicWithWriter(t, "t.parts", partitions)
	keys := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	publish := func(from, to int) {
		for n := from; n < to; n++ {
			for _, k := range keys {
				if err := cekafka.Publish(ctx, w, event(t, k, n)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	publish(0, perKey)

	from := map[int]int64{}
	for p := range partitions {
		from[p] = kafka.FirstOffset
	}
	from[1] = 5
	from[2] = kafka.LastOffset
	before := map[int]int64{} // where each partition ended before the second publish
	client := &kafka.Client{Addr: kafka.TCP(addr)}
	var reqs []kafka.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{"t.parts": reqs}})
	if err != nil {
		t.Fatal(err)
	}
	for _, po := range offs.Topics["t.parts"] {
		before[po.Partition] = po.LastOffset
	}
	if before[1] <= 5 || before[2] == 0 {
		t.Fatalf("keys spread too thinly over the partitions to test offsets: %v", before)
	}

	log := &partitionLog{records: map[int][]kafka.Message{}}
	stop := startReading(ctx, cekafka.PartitionsConfig{Brokers: []string{addr}, Topic: "t.parts",
		MaxWait: 100 * time.Millisecond, OnError: log.onError}, from, log.deliver)
	firstRead := len(keys)*perKey - 5 - int(before[2]) // partition 1 skips 5, partition 2 starts at its end
	waitFor(t, "the records already written", func() bool { return log.total() >= firstRead })
	publish(perKey, 2*perKey) // arrives while the fetch waits
	waitFor(t, "the records written while reading", func() bool { return log.total() >= firstRead+len(keys)*perKey })
	time.Sleep(200 * time.Millisecond) // anything extra would show now
	stop()

	total := log.total()
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.errs) > 0 {
		t.Errorf("errors while reading: %v", log.errs)
	}
	seen := map[string]int{}
	for p := range partitions {
		start := int64(0)
		switch p {
		case 1:
			start = 5
		case 2:
			start = before[2]
		}
		for i, m := range log.records[p] {
			if m.Offset != start+int64(i) {
				t.Fatalf("partition %d: record %d has offset %d, want %d", p, i, m.Offset, start+int64(i))
			}
			e, err := cekafka.FromMessage(m)
			if err != nil {
				t.Fatalf("partition %d offset %d: %v", p, m.Offset, err)
			}
			key := e.Extensions()["partitionkey"]
			if string(m.Key) != fmt.Sprint(key) || e.Type() != "kawase.test.v1" || len(e.Data()) == 0 {
				t.Fatalf("partition %d offset %d came back altered: key %q, event %v", p, m.Offset, m.Key, e)
			}
			seen[e.ID()]++
		}
	}
	if got, want := total, firstRead+len(keys)*perKey; got != want {
		t.Errorf("delivered %d records, want %d", got, want)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s delivered %d times", id, n)
		}
	}
	t.Logf("%d records in %d deliveries", total, log.calls)
}

// TestReadPartitionsRestartsAnOffsetOutOfRange asks for a partition past its end: the broker refuses
// the offset, the failure is reported, and the partition is read again from its start.
func TestReadPartitionsRestartsAnOffsetOutOfRange(t *testing.T) {
	addr, ctx, w := topicWithWriter(t, "t.range", 1)
	for n := range 5 {
		if err := cekafka.Publish(ctx, w, event(t, "k", n)); err != nil {
			t.Fatal(err)
		}
	}
	log := &partitionLog{records: map[int][]kafka.Message{}}
	stop := startReading(ctx, cekafka.PartitionsConfig{Brokers: []string{addr}, Topic: "t.range",
		MaxWait: 100 * time.Millisecond, OnError: log.onError}, map[int]int64{0: 1000}, log.deliver)
	waitFor(t, "the partition read from its start", func() bool { return log.total() >= 5 })
	stop()
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.errs) == 0 || !errors.Is(log.errs[0], kafka.OffsetOutOfRange) {
		t.Errorf("errors reported: %v, want OffsetOutOfRange first", log.errs)
	}
	for i, m := range log.records[0] {
		if m.Offset != int64(i) {
			t.Fatalf("record %d has offset %d after the restart", i, m.Offset)
		}
	}
}

// TestReadPartitionsStopsWhileDeliveryBlocks checks that a reader whose deliver is stuck ends once its
// context does.
func TestReadPartitionsStopsWhileDeliveryBlocks(t *testing.T) {
	addr, ctx, w := topicWithWriter(t, "t.stop", 2)
	if err := cekafka.Publish(ctx, w, event(t, "k", 1)); err != nil {
		t.Fatal(err)
	}
	readCtx, stop := context.WithCancel(ctx)
	entered := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cekafka.ReadPartitions(readCtx, cekafka.PartitionsConfig{Brokers: []string{addr}, Topic: "t.stop"},
			map[int]int64{0: kafka.FirstOffset, 1: kafka.FirstOffset}, func(ctx context.Context, _ []kafka.Message) {
				entered <- struct{}{}
				<-ctx.Done()
			})
	}()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("nothing delivered")
	}
	stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ReadPartitions did not return after its context ended")
	}
}

// TestReadPartitionsLeavesPausedPartitionsOut: a partition reported paused gets nothing, while the
// others go on being fetched; once it resumes it is read from where it stopped.
func TestReadPartitionsLeavesPausedPartitionsOut(t *testing.T) {
	const topic = "t.paused"
	addr, ctx, w := topicWithWriter(t, topic, 2)
	publish := func(from, to int) map[int]int64 {
		for n := from; n < to; n++ {
			for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
				if err := cekafka.Publish(ctx, w, event(t, k, n)); err != nil {
					t.Fatal(err)
				}
			}
		}
		extents, err := cekafka.Extents(ctx, []string{addr}, topic)
		if err != nil {
			t.Fatal(err)
		}
		ends := map[int]int64{}
		for _, e := range extents {
			ends[e.Partition] = e.Last
		}
		return ends
	}
	ends := publish(0, 10)
	if ends[0] == 0 || ends[1] == 0 {
		t.Fatalf("the keys left a partition empty: %v", ends)
	}
	var paused atomic.Bool
	paused.Store(true)
	log := &partitionLog{records: map[int][]kafka.Message{}}
	count := func(p int) int64 {
		log.mu.Lock()
		defer log.mu.Unlock()
		return int64(len(log.records[p]))
	}
	stop := startReading(ctx, cekafka.PartitionsConfig{Brokers: []string{addr}, Topic: topic, OnError: log.onError,
		Paused: func(p int) bool { return p == 0 && paused.Load() }},
		map[int]int64{0: kafka.FirstOffset, 1: kafka.FirstOffset}, log.deliver)
	defer stop()
	waitFor(t, "partition 1's records", func() bool { return count(1) == ends[1] })
	ends = publish(10, 20)
	waitFor(t, "partition 1's records written later", func() bool { return count(1) == ends[1] })
	if n := count(0); n != 0 {
		t.Fatalf("the paused partition was handed %d records", n)
	}
	paused.Store(false)
	waitFor(t, "partition 0's records after it resumed", func() bool { return count(0) == ends[0] })
	log.mu.Lock()
	defer log.mu.Unlock()
	for i, m := range log.records[0] {
		if m.Offset != int64(i) {
			t.Fatalf("partition 0: record %d has offset %d", i, m.Offset)
		}
	}
	if len(log.errs) > 0 {
		t.Errorf("errors while reading: %v", log.errs)
	}
}
