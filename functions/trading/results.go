package trading

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// Limits of the result tail. A result arrives as soon as it is written whatever the reader's MaxWait
// (see eventing/cekafka), so the wait is long enough never to time out on a busy machine.
const (
	tailRetryMs         = 1_000
	tailReaderMaxWaitMs = 500
)

// resultTail reads every partition of kawase.order.results from the end — no consumer group, so
// every trading replica sees every result — and hands each result to the request waiting for it.
type resultTail struct {
	brokers []string
	log     *zap.SugaredLogger
	ready   atomic.Bool
	mu      sync.Mutex
	// waiting holds, per command id, every request waiting for its result: two requests can send one
	// command (a cancel's id is derived from the order, so two DELETEs of it share one).
	waiting map[string][]chan eventing.OrderResultV1
}

func newResultTail(brokers []string, log *zap.SugaredLogger) *resultTail {
	return &resultTail{brokers: brokers, log: log, waiting: make(map[string][]chan eventing.OrderResultV1)}
}

// wait registers interest in the result of commandID; call it before publishing the command. The
// returned stop must be called once done.
func (t *resultTail) wait(commandID string) (<-chan eventing.OrderResultV1, func()) {
	ch := make(chan eventing.OrderResultV1, 1)
	t.mu.Lock()
	t.waiting[commandID] = append(t.waiting[commandID], ch)
	t.mu.Unlock()
	return ch, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		rest := slices.DeleteFunc(t.waiting[commandID], func(c chan eventing.OrderResultV1) bool { return c == ch })
		if len(rest) == 0 {
			delete(t.waiting, commandID)
			return
		}
		t.waiting[commandID] = rest
	}
}

func (t *resultTail) deliver(r eventing.OrderResultV1) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ch := range t.waiting[r.CommandID] {
		select {
		case ch <- r:
		default:
		}
	}
}

// run finds where every partition ends, then reads from there until ctx ends. A failed start is
// retried; results published while the tail was not yet positioned are never waited for (those
// requests have answered 202 already).
func (t *resultTail) run(ctx context.Context) error {
	var from map[int]int64
	for {
		var err error
		from, err = t.position(ctx)
		if err == nil {
			break
		}
		t.log.Warnw("cannot position the order result tail; retrying", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(tailRetryMs * time.Millisecond):
		}
	}
	t.ready.Store(true)
	cfg := cekafka.PartitionsConfig{Brokers: t.brokers, Topic: eventing.TopicOrderResults,
		MaxWait: tailReaderMaxWaitMs * time.Millisecond,
		OnError: func(err error) { t.log.Warnw("reading order results failed; retrying", "error", err) }}
	cekafka.ReadPartitions(ctx, cfg, from, func(_ context.Context, batch []kafka.Message) {
		for _, m := range batch {
			t.read(m)
		}
	})
	return nil
}

// position returns each partition's current end offset.
func (t *resultTail) position(ctx context.Context) (map[int]int64, error) {
	extents, err := cekafka.Extents(ctx, t.brokers, eventing.TopicOrderResults)
	if err != nil {
		return nil, err
	}
	from := make(map[int]int64, len(extents))
	for _, e := range extents {
		from[e.Partition] = e.Last
	}
	return from, nil
}

// read hands the result in m, if it is one, to the request waiting for it.
func (t *resultTail) read(m kafka.Message) {
	ev, err := cekafka.FromMessage(m)
	if err != nil {
		return
	}
	res, err := eventing.Decode[eventing.OrderResultV1](ev, eventing.TypeOrderResult)
	if err != nil {
		return
	}
	t.deliver(*res)
}
