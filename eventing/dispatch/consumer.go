package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// Limits of a consumer.
const (
	// unorderedInFlightCountMax bounds the deliveries one unordered consumer has in flight.
	unorderedInFlightCountMax = 64
	// partitionQueueRecordsMax bounds the records fetched ahead for one partition of an ordered
	// consumer. The group reader cannot pause one partition as Knative's consumer does, so once a
	// partition blocked in retries has this many records waiting, fetching waits for it and the other
	// partitions idle too.
	partitionQueueRecordsMax = 512
	// commitIntervalMs is how often the offsets of finished records are committed, as Knative's
	// dispatcher commits periodically rather than per record; a stop commits at once. After a crash
	// at most this much finished work is delivered again, which every subscriber absorbs (they are
	// idempotent), and the broker is spared one commit per record.
	commitIntervalMs = 50
	// Committing an offset: each attempt is bounded, and so is the number of attempts.
	commitTimeoutMs    = 5_000
	commitAttemptsMax  = 5
	commitRetryDelayMs = 200
)

// consumer runs one KafkaSource or Subscription.
type consumer struct {
	spec          Consumer
	id            string
	brokers       []string
	subscriber    string
	deadLetterURL string
	sched         schedule
	sender        *sender
	m             *metrics
	log           *zap.SugaredLogger
}

// run consumes until ctx ends or a commit fails for good. Records are committed only once delivered,
// dead-lettered, dropped or discarded; whatever is in flight when ctx ends is abandoned uncommitted.
func (c *consumer) run(ctx context.Context) error {
	r := cekafka.NewGroupReader(c.brokers, c.spec.Topic, c.spec.Group)
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	k := &committer{latest: map[int]kafka.Message{}}
	flushed := make(chan struct{})
	go func() { defer close(flushed); c.commitPeriodically(runCtx, cancel, r, k) }()
	var wg sync.WaitGroup
	var err error
	if c.spec.Ordering == Unordered {
		err = c.fetchUnordered(runCtx, r, k, &wg)
	} else {
		err = c.fetchOrdered(runCtx, r, k, &wg)
	}
	cancel(err)
	wg.Wait()
	<-flushed
	if ferr := k.flush(ctx, c, r); ferr != nil && ctx.Err() == nil {
		cancel(ferr)
	}
	if cerr := r.Close(); cerr != nil {
		return fmt.Errorf("dispatch %s: close group reader: %w", c.id, cerr)
	}
	if ctx.Err() != nil {
		return nil // stopped from outside: not a failure
	}
	return fmt.Errorf("dispatch %s: %w", c.id, context.Cause(runCtx))
}

// fetchOrdered routes each record to its partition's queue; one goroutine per partition delivers
// them one at a time.
func (c *consumer) fetchOrdered(ctx context.Context, r *kafka.Reader, k *committer, wg *sync.WaitGroup) error {
	queues := map[int]chan kafka.Message{}
	seen := offsetsSeen{}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return fetchError(ctx, err)
		}
		if !seen.first(m) {
			continue
		}
		q, ok := queues[m.Partition]
		if !ok {
			q = make(chan kafka.Message, partitionQueueRecordsMax)
			queues[m.Partition] = q
			wg.Go(func() { c.drainPartition(ctx, k, q) })
		}
		select {
		case q <- m:
		case <-ctx.Done():
			return nil
		}
	}
}

// drainPartition delivers one partition's records in order, one at a time, and marks each finished
// one for the next commit.
func (c *consumer) drainPartition(ctx context.Context, k *committer, q <-chan kafka.Message) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-q:
			if c.process(ctx, m) == outcomeAbandoned {
				return
			}
			k.mark(m)
		}
	}
}

// fetchUnordered starts a delivery per record, at most unorderedInFlightCountMax at once, and commits each
// partition's offsets in order as the deliveries finish.
func (c *consumer) fetchUnordered(ctx context.Context, r *kafka.Reader, k *committer, wg *sync.WaitGroup) error {
	slots := make(chan struct{}, unorderedInFlightCountMax)
	seen := offsetsSeen{}
	pending := map[int]*pendingOffsets{}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			return fetchError(ctx, err)
		}
		if !seen.first(m) {
			continue
		}
		p, ok := pending[m.Partition]
		if !ok {
			p = &pendingOffsets{done: map[int64]bool{}}
			pending[m.Partition] = p
		}
		p.fetched(m.Offset)
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		wg.Go(func() {
			defer func() { <-slots }()
			if c.process(ctx, m) == outcomeAbandoned {
				return
			}
			if last := p.finished(m.Offset); last >= 0 {
				k.mark(kafka.Message{Topic: m.Topic, Partition: m.Partition, Offset: last})
			}
		})
	}
}

// process delivers one record and says how it ended.
func (c *consumer) process(ctx context.Context, m kafka.Message) outcome {
	e, ok := c.toEvent(m)
	if !ok {
		c.m.deliveries.WithLabelValues(c.id, string(outcomeDiscarded)).Inc()
		return outcomeDiscarded
	}
	inFlight := c.m.inFlight.WithLabelValues(c.id)
	inFlight.Inc()
	defer inFlight.Dec()
	out := c.deliver(ctx, &e)
	c.m.deliveries.WithLabelValues(c.id, string(out)).Inc()
	return out
}

// committer holds, per partition, the last record whose offset may be committed.
type committer struct {
	mu     sync.Mutex
	latest map[int]kafka.Message
}

// mark records that m and everything before it in its partition are finished.
func (k *committer) mark(m kafka.Message) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur, ok := k.latest[m.Partition]; !ok || m.Offset > cur.Offset {
		k.latest[m.Partition] = m
	}
}

// flush commits what was marked since the last flush.
func (k *committer) flush(ctx context.Context, c *consumer, r *kafka.Reader) error {
	k.mu.Lock()
	msgs := make([]kafka.Message, 0, len(k.latest))
	for _, m := range k.latest {
		msgs = append(msgs, m)
	}
	clear(k.latest)
	k.mu.Unlock()
	if len(msgs) == 0 {
		return nil
	}
	return c.commit(ctx, r, msgs...)
}

// commitPeriodically flushes the committer every commitIntervalMs until ctx ends; a commit that fails
// for good stops the consumer.
func (c *consumer) commitPeriodically(ctx context.Context, fail context.CancelCauseFunc, r *kafka.Reader, k *committer) {
	t := time.NewTicker(commitIntervalMs * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := k.flush(ctx, c, r); err != nil {
				fail(err)
				return
			}
		}
	}
}

// commit commits the offsets of msgs. A delivery that finished is committed even while the consumer stops, so
// each attempt is bounded on its own rather than by ctx; only one attempt is made once ctx has ended.
func (c *consumer) commit(ctx context.Context, r *kafka.Reader, msgs ...kafka.Message) error {
	var err error
	for attempt := 1; attempt <= commitAttemptsMax; attempt++ {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeoutMs*time.Millisecond)
		err = r.CommitMessages(cctx, msgs...)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		c.log.Warnw("commit failed; retrying", "topic", c.spec.Topic, "records", len(msgs), "attempt", attempt, "error", err)
		time.Sleep(commitRetryDelayMs * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("commit %d offset(s) of %s for group %s: %w", len(msgs), c.spec.Topic, c.spec.Group, err)
	}
	return nil
}

// fetchError turns the reader's error into run's: nil when the consumer is stopping.
func fetchError(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("fetch: %w", err)
}

// offsetsSeen remembers the last offset fetched per partition, so that records the group reader
// fetches again after a rebalance are not queued twice.
type offsetsSeen map[int]int64

// first reports whether m is newer than every record fetched before from its partition.
func (s offsetsSeen) first(m kafka.Message) bool {
	if last, ok := s[m.Partition]; ok && m.Offset <= last {
		return false
	}
	s[m.Partition] = m.Offset
	return true
}

// pendingOffsets tracks one partition of an unordered consumer: the offsets fetched, in order, and
// which have finished. Only the finished prefix is committed, as Knative's OffsetManager does, so an
// offset is never committed past a record still in flight.
type pendingOffsets struct {
	mu    sync.Mutex
	order []int64
	done  map[int64]bool
}

func (p *pendingOffsets) fetched(offset int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.order = append(p.order, offset)
}

// finished marks offset done and returns the end of the finished prefix if it grew, else -1; the
// committer keeps the highest it is given, so the prefix never goes backwards.
func (p *pendingOffsets) finished(offset int64) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done[offset] = true
	last := int64(-1)
	for len(p.order) > 0 && p.done[p.order[0]] {
		last = p.order[0]
		delete(p.done, last)
		p.order = p.order[1:]
	}
	return last
}
