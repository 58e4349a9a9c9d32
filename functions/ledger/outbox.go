package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

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
	deleteFlushMs        = 20
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

// message is the Kafka record of an outbox event, with the decision time as the CloudEvent's time,
// so a republished event is identical to the first.
func (ev outboxEvent) message() (kafka.Message, error) {
	if ev.Topic != eventing.TopicOrderResults && ev.Topic != eventing.TopicExecutions {
		panic("ledger: outbox row for topic " + ev.Topic + " the ledger does not write")
	}
	e, err := eventing.EventFromData(ev.Type, ev.ID, ev.Key, ev.Data, ev.CreatedAt.UTC())
	if err != nil {
		return kafka.Message{}, fmt.Errorf("publish outbox: %w", err)
	}
	m, err := cekafka.ToMessage(e)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("publish outbox: %w", err)
	}
	m.Topic = ev.Topic
	return m, nil
}

// checkData decodes a stored event's payload: every row was validated when it was written, so one that
// no longer decodes is corrupt.
func (ev outboxEvent) checkData() error {
	spec, err := eventing.Lookup(ev.Type)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(ev.Data, spec.New()); err != nil {
		return fmt.Errorf("decode outbox %s %s: %w", ev.Type, ev.ID, err)
	}
	return nil
}

// publisher moves committed outbox rows to Kafka. A committed round of commands publishes its own
// events from memory and has its rows deleted shortly after (deleteLater); see group.go for why that
// keeps each account's events in order. Rows nothing published that way — a failed publish, a replica
// that died between commit and publish — are drained in id order: by the next round that notices
// them, by a redelivered command, and by a periodic sweep of rows older than outboxStaleMs. Drains of
// all replicas take turns under one advisory lock; an account's rows are inserted under its row lock,
// so in id order its events are in the order they were decided.
type publisher struct {
	pool     *pgxpool.Pool
	producer *cekafka.Producer
	sweep    time.Duration
	log      *zap.SugaredLogger
	m        *metrics

	mu        sync.Mutex
	published []int64
	flush     *time.Timer
}

func newPublisher(pool *pgxpool.Pool, brokers []string, sweep time.Duration, log *zap.SugaredLogger, m *metrics) *publisher {
	return &publisher{pool: pool, sweep: sweep, log: log, m: m, producer: cekafka.NewProducer(brokers)}
}

// close deletes the rows published so far and releases the Kafka connections.
func (p *publisher) close() {
	p.mu.Lock()
	if p.flush != nil {
		p.flush.Stop()
	}
	p.mu.Unlock()
	p.deletePublished()
	p.producer.Close()
}

// publishEvents publishes the events of committed commands (in order, so each topic's are).
func (p *publisher) publishEvents(ctx context.Context, events []outboxEvent) error {
	if err := p.publish(ctx, events); err != nil {
		return err
	}
	p.m.published.Add(float64(len(events)))
	return nil
}

// deleteLater deletes the published outbox rows ids within deleteFlushMs, together with the rows of
// other rounds. Should that fail, the rows stay and are published again (consumers dedup by id).
func (p *publisher) deleteLater(ids []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.published = append(p.published, ids...)
	if p.flush == nil {
		p.flush = time.AfterFunc(deleteFlushMs*time.Millisecond, p.deletePublished)
	}
}

func (p *publisher) deletePublished() {
	p.mu.Lock()
	ids := p.published
	p.published, p.flush = nil, nil
	p.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeoutMs*time.Millisecond)
	defer cancel()
	if _, err := p.pool.Exec(ctx, `DELETE FROM ledger.outbox WHERE id = ANY($1)`, ids); err != nil {
		p.log.Warnw("deleting published outbox rows failed; they will be published again", "rows", len(ids), "error", err)
	}
}

// run sweeps the outbox for rows left behind every sweep interval (and at once), until ctx ends. A
// failed sweep is retried with bounded exponential backoff; rows stay in the outbox meanwhile, so
// nothing is lost, only delayed.
func (p *publisher) run(ctx context.Context) error {
	ticker := time.NewTicker(p.sweep)
	defer ticker.Stop()
	backoff := publishBackoffMinMs * time.Millisecond
	for {
		err := p.drain(ctx, time.Now().Add(-outboxStaleMs*time.Millisecond))
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
		case <-ticker.C:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// drain publishes batches until the outbox holds no row created before before (zero: no row).
func (p *publisher) drain(ctx context.Context, before time.Time) error {
	for {
		n, err := p.publishBatch(ctx, before)
		if err != nil || n < outboxBatchMax {
			return err
		}
	}
}

// publishBatch publishes up to outboxBatchMax rows created before before (zero: any), oldest first,
// and deletes them once Kafka has acknowledged them all. A crash in between publishes them again: consumers dedup by event id. It
// takes two database round trips: BEGIN, the publishers' lock and the read; then DELETE and COMMIT.
func (p *publisher) publishBatch(ctx context.Context, before time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, publishTimeoutMs*time.Millisecond)
	defer cancel()
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("publish outbox: %w", err)
	}
	defer conn.Release()
	n, err := p.publishOn(ctx, conn.Conn(), before)
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeoutMs*time.Millisecond)
		_, _ = conn.Exec(rctx, "ROLLBACK")
		cancel()
	}
	return n, err
}

func (p *publisher) publishOn(ctx context.Context, c *pgx.Conn, before time.Time) (int, error) {
	var cutoff *time.Time // nil: every row
	if !before.IsZero() {
		cutoff = &before
	}
	var ids []int64
	var events []outboxEvent
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(outboxAdvisoryLockID))
	// migrations/00003_outbox_reads.sql says why a function.
	b.Queue(`SELECT id, topic, event_type, event_id, partition_key, data, created_at
		FROM ledger.outbox_batch($1, $2)`, outboxBatchMax, cutoff).Query(func(rows pgx.Rows) error {
		var err error
		ids, events, err = readOutbox(rows)
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
	if err := p.publish(ctx, events); err != nil {
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

func readOutbox(rows pgx.Rows) ([]int64, []outboxEvent, error) {
	var ids []int64
	var events []outboxEvent
	for rows.Next() {
		var id int64
		var ev outboxEvent
		if err := rows.Scan(&id, &ev.Topic, &ev.Type, &ev.ID, &ev.Key, &ev.Data, &ev.CreatedAt); err != nil {
			return nil, nil, fmt.Errorf("read outbox: %w", err)
		}
		if err := ev.checkData(); err != nil {
			// Every row was validated when it was written: one that no longer decodes is a bug.
			panic(fmt.Sprintf("ledger: outbox row %d is corrupt: %v", id, err))
		}
		ids = append(ids, id)
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read outbox: %w", err)
	}
	return ids, events, nil
}

// publish writes the events to Kafka in one go, in order (so each topic's are).
func (p *publisher) publish(ctx context.Context, events []outboxEvent) error {
	msgs := make([]kafka.Message, 0, len(events))
	for _, ev := range events {
		m, err := ev.message()
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if err := p.producer.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("publish outbox: %w", err)
	}
	return nil
}
