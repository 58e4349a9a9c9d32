package rates

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// Limits of tailing the topic. Each replica reads every partition itself (no consumer group: every
// replica must see every pair), starting BackfillRecords back from the end.
const (
	tailMaxWaitMs        = 250
	discoverBackoffMs    = 250
	discoverBackoffMaxMs = 5_000
	// skippedLogIntervalMs is the least time between two warnings about skipped records; the
	// metrics count every one.
	skippedLogIntervalMs = 1_000
)

// tailer reads every partition of the rates topic and hands each rate to apply.
type tailer struct {
	cfg   Config
	apply func(*eventing.RateV1) bool
	log   *zap.SugaredLogger
	m     *metrics
	// skippedLog paces the warnings about skipped records: a fault upstream may skip every one.
	skippedLog *observe.LogEvery
	// pending counts partitions not yet read up to where they ended at start-up; -1 until the
	// partitions are discovered.
	pending atomic.Int64
}

func newTailer(cfg Config, apply func(*eventing.RateV1) bool, log *zap.SugaredLogger, m *metrics) *tailer {
	t := &tailer{cfg: cfg, apply: apply, log: log, m: m, skippedLog: observe.NewLogEvery(skippedLogIntervalMs * time.Millisecond)}
	t.pending.Store(-1)
	return t
}

// behind is the number of partitions not caught up yet (all of them before discovery).
func (t *tailer) behind() int64 {
	if n := t.pending.Load(); n >= 0 {
		return n
	}
	return int64(1 << 30)
}

// partitionRange is where a partition's tail starts and where it ended at start-up.
type partitionRange struct {
	partition  int
	start, end int64
}

func (t *tailer) run(ctx context.Context) error {
	ranges, err := t.discoverUntilDone(ctx)
	if err != nil {
		return err
	}
	pending := int64(0)
	for _, r := range ranges {
		if r.start < r.end {
			pending++
		}
	}
	t.pending.Store(pending)
	t.read(ctx, ranges)
	return ctx.Err()
}

// discoverUntilDone retries discovery with a capped backoff until it succeeds or ctx ends: a replica
// without the topic stays unready rather than failing.
func (t *tailer) discoverUntilDone(ctx context.Context) ([]partitionRange, error) {
	backoff := discoverBackoffMs * time.Millisecond
	for {
		ranges, err := t.discover(ctx)
		if err == nil {
			return ranges, nil
		}
		t.m.tailErrors.Inc()
		t.log.Warnw("cannot discover the rates topic yet; retrying", "topic", t.cfg.Topic, "error", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, discoverBackoffMaxMs*time.Millisecond)
	}
}

func (t *tailer) discover(ctx context.Context) ([]partitionRange, error) {
	extents, err := cekafka.Extents(ctx, t.cfg.Brokers, t.cfg.Topic)
	if err != nil {
		return nil, err
	}
	ranges := make([]partitionRange, 0, len(extents))
	for _, e := range extents {
		start := max(e.First, e.Last-int64(t.cfg.BackfillRecords))
		ranges = append(ranges, partitionRange{partition: e.Partition, start: start, end: e.Last})
	}
	return ranges, nil
}

// read applies every record of every partition from its range's start on, until ctx ends, with one
// fetch loop for all partitions. A fetch error is counted and the fetch retried after a short pause, so
// a broker outage makes rates stale (and not tradeable) rather than stopping the tail.
func (t *tailer) read(ctx context.Context, ranges []partitionRange) {
	from := map[int]int64{}
	// ends holds, for each partition not read to its start-up end yet, that end; read-only once
	// reading starts, while each caught-up flag is set once.
	type startupEnd struct {
		offset   int64
		caughtUp atomic.Bool
	}
	ends := map[int]*startupEnd{}
	for _, r := range ranges {
		from[r.partition] = r.start
		if r.start < r.end {
			ends[r.partition] = &startupEnd{offset: r.end}
		}
	}
	// No Linger: the feeder already gathers about 2 ms of quotes per produce request, so a fetch finds
	// a few rates at once; a 2 ms pause here measured no saving in idle CPU and only added staleness.
	cfg := cekafka.PartitionsConfig{Brokers: t.cfg.Brokers, Topic: t.cfg.Topic, MaxWait: tailMaxWaitMs * time.Millisecond,
		OnError: func(err error) {
			t.m.tailErrors.Inc()
			t.log.Warnw("fetch from the rates topic failed; retrying", "error", err)
		}}
	cekafka.ReadPartitions(ctx, cfg, from, func(_ context.Context, batch []kafka.Message) {
		for _, m := range batch {
			t.applyMessage(m)
		}
		last := batch[len(batch)-1]
		if e, ok := ends[last.Partition]; ok && last.Offset+1 >= e.offset && e.caughtUp.CompareAndSwap(false, true) {
			t.pending.Add(-1)
		}
	})
}

func (t *tailer) applyMessage(m kafka.Message) {
	e, err := cekafka.FromMessage(m)
	var rate *eventing.RateV1
	if err == nil {
		rate, err = eventing.Decode[eventing.RateV1](e, eventing.TypeRate)
	}
	if err != nil {
		// The ratekeeper dead-letters such records; here they are only skipped and counted.
		t.m.undecodable.Inc()
		if !errors.Is(err, eventing.ErrInvalid) && !errors.Is(err, eventing.ErrUnknownType) && !errors.Is(err, cekafka.ErrNotCloudEvent) {
			if ok, held := t.skippedLog.Allow(time.Now()); ok {
				t.log.Warnw("undecodable record on the rates topic", "partition", m.Partition, "offset", m.Offset, "error", err,
					"skippedSinceLastWarning", held)
			}
		}
		return
	}
	// The ratekeeper dead-letters these too; applied here, a far-future provider time would become the
	// pair's high-water mark and hide every real rate after it.
	if err := rate.CheckRange(t.cfg.Now()); err != nil {
		t.m.outOfRange.Inc()
		if ok, held := t.skippedLog.Allow(time.Now()); ok {
			t.log.Warnw("out-of-range rate on the rates topic skipped", "partition", m.Partition, "offset", m.Offset, "error", err,
				"skippedSinceLastWarning", held)
		}
		return
	}
	t.apply(rate)
}
