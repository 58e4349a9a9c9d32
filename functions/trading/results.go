package trading

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
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
	tailDialTimeoutMs   = 5_000
	tailRetryMs         = 1_000
	tailReaderMaxWaitMs = 500
	tailReaderBytesMax  = 10 << 20
)

// resultTail reads every partition of kawase.order.results from the end — no consumer group, so
// every trading replica sees every result — and hands each result to the request waiting for it.
type resultTail struct {
	brokers []string
	log     *zap.SugaredLogger
	ready   atomic.Bool
	mu      sync.Mutex
	waiting map[string]chan eventing.OrderResultV1
}

func newResultTail(brokers []string, log *zap.SugaredLogger) *resultTail {
	return &resultTail{brokers: brokers, log: log, waiting: make(map[string]chan eventing.OrderResultV1)}
}

// wait registers interest in the result of commandID; call it before publishing the command. The
// returned stop must be called once done.
func (t *resultTail) wait(commandID string) (<-chan eventing.OrderResultV1, func()) {
	ch := make(chan eventing.OrderResultV1, 1)
	t.mu.Lock()
	t.waiting[commandID] = ch
	t.mu.Unlock()
	return ch, func() {
		t.mu.Lock()
		if t.waiting[commandID] == ch {
			delete(t.waiting, commandID)
		}
		t.mu.Unlock()
	}
}

func (t *resultTail) deliver(r eventing.OrderResultV1) {
	t.mu.Lock()
	ch, ok := t.waiting[r.CommandID]
	t.mu.Unlock()
	if !ok {
		return
	}
	select {
	case ch <- r:
	default:
	}
}

// run positions one reader per partition at the partition's end, then reads until ctx ends. A
// failed start is retried; results published while no reader ran are never waited for (those requests
// have answered 202 already).
func (t *resultTail) run(ctx context.Context) error {
	var readers []*kafka.Reader
	for {
		var err error
		readers, err = t.position(ctx)
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
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Go(func() { t.read(ctx, r) })
	}
	wg.Wait()
	return nil
}

// position creates a reader per partition starting at the partition's current last offset.
func (t *resultTail) position(ctx context.Context) ([]*kafka.Reader, error) {
	dctx, cancel := context.WithTimeout(ctx, tailDialTimeoutMs*time.Millisecond)
	defer cancel()
	conn, err := kafka.DialContext(dctx, "tcp", t.brokers[0])
	if err != nil {
		return nil, fmt.Errorf("dial kafka: %w", err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(eventing.TopicOrderResults)
	if err != nil {
		return nil, fmt.Errorf("read partitions of %s: %w", eventing.TopicOrderResults, err)
	}
	var readers []*kafka.Reader
	for _, p := range parts {
		last, err := lastOffset(dctx, p)
		if err != nil {
			for _, r := range readers {
				_ = r.Close()
			}
			return nil, err
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: t.brokers, Topic: p.Topic, Partition: p.ID, MinBytes: 1,
			MaxBytes: tailReaderBytesMax, MaxWait: tailReaderMaxWaitMs * time.Millisecond})
		if err := r.SetOffset(last); err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("position result reader: %w", err)
		}
		readers = append(readers, r)
	}
	if len(readers) == 0 {
		return nil, errors.New("topic " + eventing.TopicOrderResults + " has no partitions")
	}
	return readers, nil
}

func lastOffset(ctx context.Context, p kafka.Partition) (int64, error) {
	addr := net.JoinHostPort(p.Leader.Host, strconv.Itoa(p.Leader.Port))
	conn, err := kafka.DialLeader(ctx, "tcp", addr, p.Topic, p.ID)
	if err != nil {
		return 0, fmt.Errorf("dial leader of %s/%d: %w", p.Topic, p.ID, err)
	}
	defer conn.Close()
	off, err := conn.ReadLastOffset()
	if err != nil {
		return 0, fmt.Errorf("last offset of %s/%d: %w", p.Topic, p.ID, err)
	}
	return off, nil
}

func (t *resultTail) read(ctx context.Context, r *kafka.Reader) {
	defer r.Close()
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.log.Warnw("reading order results failed; retrying", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(tailRetryMs * time.Millisecond):
			}
			continue
		}
		ev, err := cekafka.FromMessage(m)
		if err != nil {
			continue
		}
		res, err := eventing.Decode[eventing.OrderResultV1](ev, eventing.TypeOrderResult)
		if err != nil {
			continue
		}
		t.deliver(*res)
	}
}
