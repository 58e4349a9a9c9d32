package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// Limits of the outbox publisher.
const (
	outboxBatchMax       = 500
	publishBackoffMinMs  = 50
	publishBackoffMaxMs  = 5_000
	publishTimeoutMs     = 15_000
	outboxAdvisoryLockID = 0x6b617761_7365_6f62 // "kawase" "ob": serializes publishers of all replicas
)

// outboxEvent is one event of a committed command, waiting to be published.
type outboxEvent struct {
	Topic     string
	Type      string
	ID        string
	Key       string
	Data      []byte
	CreatedAt time.Time
}

// resultEvents renders a command's executions and result as outbox events: one
// kawase.trade.executed.v1 per execution (id = execution id) and one kawase.order.result.v1
// (id = "result:" + command id), so a republished event carries the same id.
func resultEvents(res eventing.OrderResultV1, execs []execution, now time.Time) ([]outboxEvent, error) {
	out := make([]outboxEvent, 0, len(execs)+1)
	for _, x := range execs {
		p := &eventing.TradeExecutedV1{ExecutionID: x.ID, AccountID: x.AccountID, AccountSeq: x.AccountSeq,
			OrderID: x.OrderID, Pair: x.Pair, Side: x.Side, Units: x.Units, Price: x.Price, RealizedPL: x.RealizedPL,
			Currency: x.Currency, Reason: x.Reason, ExecutedAt: x.ExecutedAt}
		ev, err := newOutboxEvent(eventing.TypeTradeExecuted, x.ID, p, now)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	ev, err := newOutboxEvent(eventing.TypeOrderResult, ResultEventID(res.CommandID), &res, now)
	if err != nil {
		return nil, err
	}
	return append(out, ev), nil
}

// ResultEventID is the CloudEvent id of the result of command commandID.
func ResultEventID(commandID string) string { return "result:" + commandID }

func newOutboxEvent(eventType, id string, p eventing.Payload, now time.Time) (outboxEvent, error) {
	spec, err := eventing.Lookup(eventType)
	if err != nil {
		return outboxEvent{}, err
	}
	if err := p.Validate(); err != nil {
		// The ledger built this payload itself; an invalid one is a bug.
		panic(fmt.Sprintf("ledger: built an invalid %s %s: %v", eventType, id, err))
	}
	data, err := json.Marshal(p)
	if err != nil {
		return outboxEvent{}, fmt.Errorf("encode %s %s: %w", eventType, id, err)
	}
	return outboxEvent{Topic: spec.Topic, Type: eventType, ID: id, Key: p.PartitionKey(), Data: data, CreatedAt: now}, nil
}

// toCloudEvent rebuilds the CloudEvent of an outbox row, with the decision time as its time, so a
// republished event is identical to the first.
func (ev outboxEvent) toCloudEvent() (cloudevents.Event, error) {
	spec, err := eventing.Lookup(ev.Type)
	if err != nil {
		return cloudevents.Event{}, err
	}
	p := spec.New()
	if err := json.Unmarshal(ev.Data, p); err != nil {
		return cloudevents.Event{}, fmt.Errorf("decode outbox %s %s: %w", ev.Type, ev.ID, err)
	}
	e, err := eventing.NewEvent(ev.Type, ev.ID, p)
	if err != nil {
		return cloudevents.Event{}, err
	}
	e.SetTime(ev.CreatedAt.UTC())
	return e, nil
}

// publisher moves committed outbox rows to Kafka: at once when a command commits (kick), and in a
// periodic sweep that also picks up rows left by a replica that died after committing. Publishers of
// all replicas take turns under one advisory lock, and each takes rows in id order; an account's rows
// are inserted under its row lock, so its events are published in the order they were decided.
type publisher struct {
	pool    *pgxpool.Pool
	writers map[string]*kafka.Writer
	kick    chan struct{}
	sweep   time.Duration
	log     *zap.SugaredLogger
	m       *metrics
}

func newPublisher(pool *pgxpool.Pool, brokers []string, sweep time.Duration, log *zap.SugaredLogger, m *metrics) *publisher {
	return &publisher{pool: pool, sweep: sweep, log: log, m: m, kick: make(chan struct{}, 1),
		writers: map[string]*kafka.Writer{
			eventing.TopicOrderResults: cekafka.NewWriter(brokers, eventing.TopicOrderResults),
			eventing.TopicExecutions:   cekafka.NewWriter(brokers, eventing.TopicExecutions),
		}}
}

// Kick asks for a publishing round soon; it never blocks.
func (p *publisher) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *publisher) close() {
	for _, w := range p.writers {
		_ = w.Close()
	}
}

// run publishes until ctx ends. A failed round is retried with bounded exponential backoff; rows stay
// in the outbox meanwhile, so nothing is lost, only delayed.
func (p *publisher) run(ctx context.Context) error {
	ticker := time.NewTicker(p.sweep)
	defer ticker.Stop()
	backoff := publishBackoffMinMs * time.Millisecond
	for {
		err := p.drain(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := p.sweep
		if err != nil {
			p.m.publishErrors.Inc()
			p.log.Warnw("publishing the outbox failed; will retry", "error", err, "backoff", backoff)
			wait, backoff = backoff, min(2*backoff, publishBackoffMaxMs*time.Millisecond)
		} else {
			backoff = publishBackoffMinMs * time.Millisecond
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-p.kick:
		case <-ticker.C:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// drain publishes batches until the outbox is empty.
func (p *publisher) drain(ctx context.Context) error {
	for {
		n, err := p.publishBatch(ctx)
		if err != nil || n < outboxBatchMax {
			return err
		}
	}
}

// publishBatch publishes up to outboxBatchMax rows, oldest first, and deletes them once Kafka has
// acknowledged them all. A crash in between publishes them again: consumers dedup by event id. It
// takes two database round trips: BEGIN, the publishers' lock and the read; then DELETE and COMMIT.
func (p *publisher) publishBatch(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, publishTimeoutMs*time.Millisecond)
	defer cancel()
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("publish outbox: %w", err)
	}
	defer conn.Release()
	n, err := p.publishOn(ctx, conn.Conn())
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeoutMs*time.Millisecond)
		_, _ = conn.Exec(rctx, "ROLLBACK")
		cancel()
	}
	return n, err
}

func (p *publisher) publishOn(ctx context.Context, c *pgx.Conn) (int, error) {
	var ids []int64
	byTopic := map[string][]cloudevents.Event{}
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(outboxAdvisoryLockID))
	b.Queue(`SELECT id, topic, event_type, event_id, partition_key, data, created_at
		FROM ledger.outbox ORDER BY id LIMIT $1`, outboxBatchMax).Query(func(rows pgx.Rows) error {
		var err error
		ids, byTopic, err = readOutbox(rows)
		return err
	})
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("publish outbox: read: %w", err)
	}
	if len(ids) == 0 {
		if _, err := c.Exec(ctx, "COMMIT"); err != nil {
			return 0, fmt.Errorf("publish outbox: %w", err)
		}
		return 0, nil
	}
	if err := p.publish(ctx, byTopic); err != nil {
		return 0, err
	}
	b = &pgx.Batch{}
	b.Queue(`DELETE FROM ledger.outbox WHERE id = ANY($1)`, ids)
	b.Queue(`COMMIT`)
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("publish outbox: delete: %w", err)
	}
	p.m.published.Add(float64(len(ids)))
	return len(ids), nil
}

func readOutbox(rows pgx.Rows) ([]int64, map[string][]cloudevents.Event, error) {
	var ids []int64
	byTopic := map[string][]cloudevents.Event{}
	for rows.Next() {
		var id int64
		var ev outboxEvent
		if err := rows.Scan(&id, &ev.Topic, &ev.Type, &ev.ID, &ev.Key, &ev.Data, &ev.CreatedAt); err != nil {
			return nil, nil, fmt.Errorf("read outbox: %w", err)
		}
		ce, err := ev.toCloudEvent()
		if err != nil {
			// Every row was validated when it was written: one that no longer decodes is a bug.
			panic(fmt.Sprintf("ledger: outbox row %d is corrupt: %v", id, err))
		}
		ids = append(ids, id)
		byTopic[ev.Topic] = append(byTopic[ev.Topic], ce)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read outbox: %w", err)
	}
	return ids, byTopic, nil
}

// publish writes each topic's events (in order) to Kafka, the topics concurrently.
func (p *publisher) publish(ctx context.Context, byTopic map[string][]cloudevents.Event) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(byTopic))
	for topic, events := range byTopic {
		w, ok := p.writers[topic]
		if !ok {
			panic("ledger: outbox row for topic " + topic + " the ledger does not write")
		}
		wg.Go(func() {
			if err := cekafka.Publish(ctx, w, events...); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("publish outbox: %w", err)
	}
	return nil
}
