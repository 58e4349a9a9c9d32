package dispatch

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// Limits of a consumer.
const (
	// unorderedInFlightCountMax bounds the deliveries one unordered consumer has in flight.
	unorderedInFlightCountMax = 64
	// partitionQueueRecordsMax bounds the records fetched ahead for one partition of an ordered
	// consumer: with this many waiting (a partition blocked in retries, say) the partition is left out
	// of fetches until it catches up, as Knative's consumer pauses it, and the other partitions go on.
	// A fetch adds at most 1 MiB of stored (possibly compressed) records to a partition's queue, so
	// it never holds much more; kawase_dispatch_records_waiting shows what the consumer holds.
	partitionQueueRecordsMax = 512
	// commitIntervalMs is how often the offsets of finished records are committed, as Knative's
	// dispatcher commits periodically rather than per record; a stop commits at once. After a crash
	// at most this much finished work is delivered again, which every subscriber absorbs (they are
	// idempotent), and the broker is spared one commit per record.
	commitIntervalMs = 50
	// Committing an offset: each attempt is bounded (by the group's coordinator timeout), and so is the
	// number of attempts.
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

// run consumes as a member of the consumer group until ctx ends. Each generation of the group (each
// assignment of partitions) is consumed on its own; see consume. Trouble with Kafka (joining,
// fetching, committing) is counted and retried without bound, on purpose: a dispatcher waits for its
// broker rather than stopping, kafka-go's group backs off between joins, and a generation whose
// commits fail ends so that the next one starts on a fresh coordinator connection. It fails only
// when the group cannot be set up at all.
func (c *consumer) run(ctx context.Context) error {
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: c.spec.Group, Brokers: c.brokers, Topics: []string{c.spec.Topic},
		StartOffset: kafka.FirstOffset, Timeout: commitTimeoutMs * time.Millisecond,
	})
	if err != nil {
		return fmt.Errorf("dispatch %s: consumer group: %w", c.id, err)
	}
	// Closing as soon as ctx ends, rather than once run returns, keeps kafka-go from joining the
	// group again when the last generation ends; Close waits for that generation's final commit.
	leave := context.AfterFunc(ctx, func() { _ = group.Close() })
	defer func() {
		leave()
		_ = group.Close() // leaving is best effort: the session expires anyway
	}()
	for {
		gen, err := group.Next(ctx)
		if ctx.Err() != nil {
			return nil // stopped from outside: not a failure
		}
		if err != nil {
			c.m.consumerErrors.WithLabelValues(c.id, "join").Inc()
			c.log.Warnw("joining the consumer group failed; retrying", "group", c.spec.Group, "error", err)
			continue
		}
		done := make(chan struct{})
		gen.Start(func(genCtx context.Context) {
			defer close(done)
			c.consume(ctx, genCtx, gen)
		})
		<-done
	}
}

// consume reads and delivers the partitions gen assigned until the generation ends (the group
// rebalances, or a commit fails) or ctx does, with one fetch loop for all of them. Records are
// committed only once delivered, dead-lettered, dropped or discarded; what is in flight at the end is
// abandoned uncommitted and delivered again by the partition's next owner, as is finished work whose
// commit failed.
func (c *consumer) consume(ctx, genCtx context.Context, gen *kafka.Generation) {
	runCtx, cancel := context.WithCancelCause(genCtx)
	defer cancel(nil)
	defer context.AfterFunc(ctx, func() { cancel(nil) })()
	from := map[int]int64{}
	for _, a := range gen.Assignments[c.spec.Topic] {
		from[a.ID] = a.Offset
	}
	k := &committer{next: map[int]int64{}}
	flushed := make(chan struct{})
	go func() { defer close(flushed); c.commitPeriodically(runCtx, cancel, gen, k) }()
	var wg sync.WaitGroup
	cfg := cekafka.PartitionsConfig{Brokers: c.brokers, Topic: c.spec.Topic, Linger: c.spec.FetchLinger,
		OnError: func(err error) {
			c.m.consumerErrors.WithLabelValues(c.id, "fetch").Inc()
			c.log.Warnw("fetch failed; retrying", "topic", c.spec.Topic, "error", err)
		}}
	var deliver func(context.Context, []kafka.Message)
	release := func() {}
	if c.spec.Ordering == Unordered {
		deliver = c.unorderedDelivery(runCtx, k, from, &wg)
	} else {
		deliver, cfg.Paused, release = c.orderedDelivery(runCtx, k, from, &wg)
	}
	cekafka.ReadPartitions(runCtx, cfg, from, deliver)
	<-runCtx.Done()
	wg.Wait()
	release()
	<-flushed
	if err := context.Cause(runCtx); errors.Is(err, errCommitFailed) {
		c.log.Warnw("ending the generation after failed commits; the next one starts afresh", "error", err)
		return
	}
	// The last finished work: one attempt, since the generation or the dispatcher is ending.
	if err := c.commit(ctx, gen, k.take(), 1); err != nil && !errors.Is(err, errGenerationOver) {
		c.log.Warnw("final commit of the generation failed; its last finished records will be delivered again", "error", err)
	}
}

// orderedDelivery starts a goroutine per partition that delivers the partition's records one at a
// time, in order. It returns the fetch loop's hand-off to them (which never blocks), which partitions
// to leave out of fetches for now, and release, which forgets what is left once the goroutines and
// the fetch loop have stopped.
func (c *consumer) orderedDelivery(ctx context.Context, k *committer, partitions map[int]int64, wg *sync.WaitGroup) (deliver func(context.Context, []kafka.Message), paused func(int) bool, release func()) {
	waiting := c.m.waiting.WithLabelValues(c.id)
	queues := make(map[int]*partitionQueue, len(partitions))
	for p := range partitions {
		q := &partitionQueue{ready: make(chan struct{}, 1), waiting: waiting}
		queues[p] = q
		wg.Go(func() { c.drainPartition(ctx, k, q) })
	}
	deliver = func(_ context.Context, batch []kafka.Message) { queues[batch[0].Partition].push(batch) }
	paused = func(p int) bool { return queues[p].held.Load() >= partitionQueueRecordsMax }
	release = func() {
		for _, q := range queues {
			waiting.Sub(float64(q.held.Swap(0)))
		}
	}
	return deliver, paused, release
}

// partitionQueue holds one partition's fetched records until its delivery goroutine takes them.
type partitionQueue struct {
	mu      sync.Mutex
	records []kafka.Message
	ready   chan struct{} // signalled when records were added
	// held counts the records handed over and not yet finished, taken ones included; waiting is the
	// consumer's gauge of the same, over all its partitions.
	held    atomic.Int64
	waiting prometheus.Gauge
}

func (q *partitionQueue) push(batch []kafka.Message) {
	q.held.Add(int64(len(batch)))
	q.waiting.Add(float64(len(batch)))
	q.mu.Lock()
	q.records = append(q.records, batch...)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take waits for records and returns all of them; ok is false once ctx ended.
func (q *partitionQueue) take(ctx context.Context) (records []kafka.Message, ok bool) {
	for {
		q.mu.Lock()
		records, q.records = q.records, nil
		q.mu.Unlock()
		if len(records) > 0 {
			return records, true
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-q.ready:
		}
	}
}

// drainPartition delivers one partition's records in order, one at a time, and marks each finished
// one for the next commit.
func (c *consumer) drainPartition(ctx context.Context, k *committer, q *partitionQueue) {
	for {
		records, ok := q.take(ctx)
		if !ok {
			return
		}
		for _, m := range records {
			if ctx.Err() != nil || c.process(ctx, m) == outcomeAbandoned {
				return
			}
			k.mark(m.Partition, m.Offset)
			q.held.Add(-1)
			q.waiting.Dec()
		}
	}
}

// unorderedDelivery returns the fetch loop's hand-off for an unordered consumer: a delivery per
// record, at most unorderedInFlightCountMax at once, each partition's offsets committed in order as
// the deliveries finish.
func (c *consumer) unorderedDelivery(ctx context.Context, k *committer, partitions map[int]int64, wg *sync.WaitGroup) func(context.Context, []kafka.Message) {
	slots := make(chan struct{}, unorderedInFlightCountMax)
	pending := make(map[int]*pendingOffsets, len(partitions))
	for p := range partitions {
		pending[p] = &pendingOffsets{done: map[int64]bool{}}
	}
	return func(fetchCtx context.Context, batch []kafka.Message) {
		p := pending[batch[0].Partition]
		for _, m := range batch {
			select {
			case slots <- struct{}{}:
			case <-fetchCtx.Done():
				return
			}
			p.fetched(m.Offset)
			wg.Go(func() {
				defer func() { <-slots }()
				if c.process(ctx, m) == outcomeAbandoned {
					return
				}
				if last := p.finished(m.Offset); last >= 0 {
					k.mark(m.Partition, last)
				}
			})
		}
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

// committer holds, per partition, the offset to commit: the one after the last finished record.
type committer struct {
	mu   sync.Mutex
	next map[int]int64
}

// mark records that the record at offset and everything before it in partition are finished.
func (k *committer) mark(partition int, offset int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur, ok := k.next[partition]; !ok || offset+1 > cur {
		k.next[partition] = offset + 1
	}
}

// take returns what was marked since the last take.
func (k *committer) take() map[int]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	offsets := maps.Clone(k.next)
	clear(k.next)
	return offsets
}

// errCommitFailed ends a generation: its offsets could not be committed within commitAttemptsMax.
var errCommitFailed = errors.New("commit failed")

// errGenerationOver reports a commit refused because the group moved on to a new generation: the
// finished records it held are delivered again by the partition's next owner.
var errGenerationOver = errors.New("the consumer group rebalanced")

// commitPeriodically commits what finished every commitIntervalMs until ctx ends. A commit that fails
// for good, or is refused because the group rebalanced, ends the generation.
func (c *consumer) commitPeriodically(ctx context.Context, stop context.CancelCauseFunc, gen *kafka.Generation, k *committer) {
	t := time.NewTicker(commitIntervalMs * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.commit(ctx, gen, k.take(), commitAttemptsMax); err != nil {
				stop(err)
				return
			}
		}
	}
}

// commit commits offsets in at most attempts attempts, each bounded by the group's coordinator
// timeout; only one attempt is made once ctx has ended.
func (c *consumer) commit(ctx context.Context, gen *kafka.Generation, offsets map[int]int64, attempts int) error {
	if len(offsets) == 0 {
		return nil
	}
	var err error
	for attempt := 1; attempt <= attempts; attempt++ {
		err = gen.CommitOffsets(map[string]map[int]int64{c.spec.Topic: offsets})
		if err == nil {
			return nil
		}
		c.m.consumerErrors.WithLabelValues(c.id, "commit").Inc()
		if errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration) ||
			errors.Is(err, kafka.UnknownMemberId) {
			return fmt.Errorf("commit %d offset(s) of %s for group %s: %w: %w", len(offsets), c.spec.Topic, c.spec.Group, errGenerationOver, err)
		}
		if ctx.Err() != nil || attempt == attempts {
			break
		}
		c.log.Warnw("commit failed; retrying", "topic", c.spec.Topic, "partitions", len(offsets), "attempt", attempt, "error", err)
		time.Sleep(commitRetryDelayMs * time.Millisecond)
	}
	return fmt.Errorf("commit %d offset(s) of %s for group %s: %w: %w", len(offsets), c.spec.Topic, c.spec.Group, errCommitFailed, err)
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
