package ratekeeper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// ErrOverloaded is returned when more deliveries wait than the keeper queues; the delivery is retried.
var ErrOverloaded = errors.New("ratekeeper overloaded")

// ErrStopped is returned when the keeper stopped before it could process a delivery.
var ErrStopped = errors.New("ratekeeper stopped")

// submission is one delivered rate waiting for its batch to commit.
type submission struct {
	rate *eventing.RateV1
	done chan verdict
}

type verdict struct {
	outcome Outcome
	err     error
}

// Process records rate exactly once: it waits until the batch holding it has committed and returns
// what was done with it. Errors are transient (the delivery should be retried).
func (k *Keeper) Process(ctx context.Context, rate *eventing.RateV1) (Outcome, error) {
	s := &submission{rate: rate, done: make(chan verdict, 1)}
	select {
	case k.queue <- s:
	default:
		return "", ErrOverloaded
	}
	select {
	case v := <-s.done:
		return v.outcome, v.err
	case <-ctx.Done():
		return "", fmt.Errorf("wait for commit: %w", ctx.Err())
	case <-k.stopped:
		return "", ErrStopped
	}
}

// write gathers waiting deliveries (up to BatchSizeMax) and commits them in one transaction, so
// concurrent deliveries share one round of statements and one commit. Only one writer gathers at a
// time; the others commit meanwhile, so gathering overlaps committing.
func (k *Keeper) write(ctx context.Context) error {
	for {
		batch, err := k.gather(ctx)
		if err != nil {
			return err
		}
		k.commit(ctx, batch)
	}
}

// gather waits for a first delivery, then keeps taking deliveries while they keep coming: it stops
// when none arrived for batchGatherIdleMs, when batchGatherMs passed since the first, or when the
// batch is full. At 1,000 rates/s a delivery arrives about every millisecond, so batches grow from
// one rate per commit to several without delaying a rate by more than batchGatherMs; a backlog (all
// partitions redelivering at once after a commit) is gathered whole.
func (k *Keeper) gather(ctx context.Context) ([]*submission, error) {
	k.gathering.Lock()
	defer k.gathering.Unlock()
	var first *submission
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case first = <-k.queue:
	}
	batch := []*submission{first}
	if k.cfg.GatherMax <= 0 {
		return k.drainWaiting(batch), nil
	}
	deadline := time.NewTimer(k.cfg.GatherMax)
	defer deadline.Stop()
	idle := time.NewTimer(k.cfg.GatherIdle)
	defer idle.Stop()
	for len(batch) < k.cfg.BatchSizeMax {
		select {
		case s := <-k.queue:
			batch = append(batch, s)
			idle.Reset(k.cfg.GatherIdle)
		case <-idle.C:
			return batch, nil
		case <-deadline.C:
			return batch, nil
		case <-ctx.Done():
			return batch, nil
		}
	}
	return batch, nil
}

// drainWaiting adds the deliveries already waiting to batch, without waiting for more.
func (k *Keeper) drainWaiting(batch []*submission) []*submission {
	for len(batch) < k.cfg.BatchSizeMax {
		select {
		case s := <-k.queue:
			batch = append(batch, s)
		default:
			return batch
		}
	}
	return batch
}

func (k *Keeper) commit(ctx context.Context, batch []*submission) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, txTimeoutMs*time.Millisecond)
	defer cancel()
	outcomes, err := k.inTransaction(ctx, batch)
	if err != nil {
		k.metrics.storeErrors.Inc()
		k.log.Warnw("rate batch failed; deliveries will be retried", "rates", len(batch), "error", err)
		for _, s := range batch {
			s.done <- verdict{err: fmt.Errorf("commit rate batch: %w", err)}
		}
		return
	}
	now := k.cfg.Now()
	k.metrics.batchSize.Observe(float64(len(batch)))
	k.metrics.batchTime.Observe(time.Since(start).Seconds())
	for i, s := range batch {
		k.metrics.outcomes[outcomes[i]].Inc()
		if outcomes[i] == OutcomeAccepted && !s.rate.ReceivedAt.IsZero() {
			k.metrics.lag.Observe(now.Sub(s.rate.ReceivedAt).Seconds())
		}
		s.done <- verdict{outcome: outcomes[i]}
	}
}

// mark is a pair's high-water mark as locked for the transaction.
type mark struct {
	pair    fx.Pair
	has     bool
	last    eventing.RateV1 // only ProviderTime and QuoteID are set
	epoch   int64
	ticks   int64
	changed bool
	// rolledUpTo is the S5 bucket from which on the pair's S5 candles are not yet in its rollups
	// (rolled false: none is).
	rolledUpTo time.Time
	rolled     bool
}

// rollUp reports the S5 candles the pair's accepted rates have closed, [from, to) with from unset
// (hasFrom false) meaning from the first, and advances the mark past them; ok is false when there
// are none (no rate accepted, or the latest still in the bucket rolled up to).
func (m *mark) rollUp() (from time.Time, hasFrom bool, to time.Time, ok bool) {
	if !m.has {
		return time.Time{}, false, time.Time{}, false
	}
	open := m.last.ProviderTime.UTC().Truncate(s5.width)
	if m.rolled && !m.rolledUpTo.Before(open) {
		return time.Time{}, false, time.Time{}, false
	}
	from, hasFrom = m.rolledUpTo, m.rolled
	m.rolledUpTo, m.rolled, m.changed = open, true, true
	return from, hasFrom, open, true
}

// decide applies the exactly-once rule to one rate against its pair's mark, advancing the mark when
// the rate is accepted. A rate not newer than the mark is a duplicate (whatever its epoch); a newer
// rate from an epoch older than the pair's highest is a stale leader's and refused. Any rate with a
// higher epoch raises the pair's fence, even a duplicate: a new leader republishing quotes already
// processed has still taken over.
func (m *mark) decide(r *eventing.RateV1) Outcome {
	if r.Epoch > m.epoch {
		m.epoch, m.changed = r.Epoch, true
	}
	switch {
	case m.has && !r.NewerThan(&m.last):
		return OutcomeDuplicate
	case r.Epoch < m.epoch:
		return OutcomeStaleEpoch
	}
	m.has, m.changed = true, true
	m.last = eventing.RateV1{ProviderTime: r.ProviderTime, QuoteID: r.QuoteID}
	m.ticks++
	return OutcomeAccepted
}

const lockMarksSQL = `SELECT pair, provider_ns, quote_id, epoch, ticks, rolled_up_to FROM ratekeeper.marks
WHERE pair = ANY($1) ORDER BY pair FOR UPDATE`

// inTransaction processes a batch in one transaction on one connection, in two pipelined round trips
// plus the trigger's: BEGIN with locking the marks, then the writes with COMMIT. A connection left
// inside a transaction by a failure is rolled back, or else destroyed by the pool on release.
func (k *Keeper) inTransaction(ctx context.Context, batch []*submission) ([]Outcome, error) {
	conn, err := k.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	outcomes, err := k.apply(ctx, conn, batch)
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	}
	return outcomes, err
}

// apply runs the batch's statements: lock the marks of its pairs (in pair order, so concurrent
// batches cannot deadlock), decide each rate in delivery order, call the trigger for each accepted
// rate, then write ticks, candles and marks and commit, in one pipelined round trip.
func (k *Keeper) apply(ctx context.Context, q Querier, batch []*submission) ([]Outcome, error) {
	marks, err := k.lockMarks(ctx, q, batch)
	if err != nil {
		return nil, err
	}
	outcomes := make([]Outcome, len(batch))
	w := newBatchWrite()
	for i, s := range batch {
		m := marks[s.rate.Pair]
		outcomes[i] = m.decide(s.rate)
		if outcomes[i] == OutcomeAccepted {
			w.addTick(s.rate, m.ticks)
		}
	}
	for _, m := range marks {
		if from, hasFrom, to, ok := m.rollUp(); ok {
			w.candles.addRollup(m.pair, from, hasFrom, to)
		}
		if m.changed {
			w.addMark(m)
		}
	}
	for i, s := range batch {
		if outcomes[i] != OutcomeAccepted {
			continue
		}
		if err := k.trigger.OnRate(ctx, q, s.rate); err != nil {
			return nil, fmt.Errorf("trigger on %s: %w", s.rate.EventID(), err)
		}
	}
	if err := w.sendAndCommit(ctx, q); err != nil {
		return nil, err
	}
	for p := range marks { // committed: their rows exist from now on
		k.marked.Store(p, struct{}{})
	}
	return outcomes, nil
}

// lockMarks opens the transaction and locks the marks of the batch's pairs, creating missing ones
// first unless every pair's mark is known to exist (marks are never deleted).
func (k *Keeper) lockMarks(ctx context.Context, q Querier, batch []*submission) (map[fx.Pair]*mark, error) {
	pairs := make([]string, 0, len(batch))
	for _, s := range batch {
		pairs = append(pairs, string(s.rate.Pair))
	}
	slices.Sort(pairs)
	pairs = slices.Compact(pairs)
	seed := slices.ContainsFunc(pairs, func(p string) bool { _, ok := k.marked.Load(fx.Pair(p)); return !ok })
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if seed {
		b.Queue(`INSERT INTO ratekeeper.marks (pair) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, pairs)
	}
	b.Queue(lockMarksSQL, pairs)
	res := q.SendBatch(ctx, b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if seed {
		if _, err := res.Exec(); err != nil {
			return nil, fmt.Errorf("seed marks: %w", err)
		}
	}
	rows, err := res.Query()
	if err != nil {
		return nil, fmt.Errorf("lock marks: %w", err)
	}
	defer rows.Close()
	marks := make(map[fx.Pair]*mark, len(pairs))
	for rows.Next() {
		var (
			m      mark
			ns     *int64
			qid    *string
			rolled *time.Time
		)
		if err := rows.Scan(&m.pair, &ns, &qid, &m.epoch, &m.ticks, &rolled); err != nil {
			return nil, fmt.Errorf("scan mark: %w", err)
		}
		if rolled != nil {
			m.rolledUpTo, m.rolled = rolled.UTC(), true
		}
		if ns != nil && qid != nil {
			m.has = true
			m.last = eventing.RateV1{ProviderTime: time.Unix(0, *ns).UTC(), QuoteID: *qid}
		}
		marks[m.pair] = &m
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock marks: %w", err)
	}
	if len(marks) != len(pairs) {
		for _, p := range pairs { // deleted behind our back: seed them again next time
			k.marked.Delete(fx.Pair(p))
		}
		return nil, fmt.Errorf("lock marks: %d of %d pairs found", len(marks), len(pairs))
	}
	return marks, res.Close()
}

// batchWrite collects a batch's rows as column arrays, written with one unnest statement per table.
type batchWrite struct {
	tickPair, tickQuote, tickBid, tickAsk, tickSession []string
	tickN, tickNs, tickEpoch, tickSeq                  []int64
	tickTime                                           []time.Time
	tickMsgSeq                                         []int32
	tickReceived                                       []pgtype.Timestamptz

	markPair, markQuote          []string
	markNs, markEpoch, markTicks []int64
	markRolled                   []pgtype.Timestamptz

	candles *candleSet
}

func newBatchWrite() *batchWrite { return &batchWrite{candles: newCandleSet()} }

// addTick adds accepted rate r, the pair's nth.
func (w *batchWrite) addTick(r *eventing.RateV1, n int64) {
	w.tickPair = append(w.tickPair, string(r.Pair))
	w.tickN = append(w.tickN, n)
	w.tickNs = append(w.tickNs, r.ProviderTime.UnixNano())
	w.tickTime = append(w.tickTime, r.ProviderTime)
	w.tickQuote = append(w.tickQuote, r.QuoteID)
	w.tickBid = append(w.tickBid, r.Bid.String())
	w.tickAsk = append(w.tickAsk, r.Ask.String())
	w.tickEpoch = append(w.tickEpoch, r.Epoch)
	w.tickSeq = append(w.tickSeq, r.Seq)
	w.tickSession = append(w.tickSession, r.Session)
	w.tickMsgSeq = append(w.tickMsgSeq, int32(r.MsgSeqNum))
	w.tickReceived = append(w.tickReceived, pgtype.Timestamptz{Time: r.ReceivedAt, Valid: !r.ReceivedAt.IsZero()})
	w.candles.add(r)
}

func (w *batchWrite) addMark(m *mark) {
	w.markPair = append(w.markPair, string(m.pair))
	w.markEpoch = append(w.markEpoch, m.epoch)
	w.markTicks = append(w.markTicks, m.ticks)
	ns, q := int64(0), ""
	if m.has {
		ns, q = m.last.ProviderTime.UnixNano(), m.last.QuoteID
	}
	w.markNs = append(w.markNs, ns)
	w.markQuote = append(w.markQuote, q)
	w.markRolled = append(w.markRolled, pgtype.Timestamptz{Time: m.rolledUpTo, Valid: m.rolled})
}

const insertTicksSQL = `INSERT INTO ratekeeper.ticks (pair, n, provider_ns, provider_time, quote_id, bid, ask,
  epoch, seq, session, msg_seq_num, received_at)
SELECT t.pair, t.n, t.ns, t.pt, t.q, t.bid::numeric, t.ask::numeric, t.e, t.s, t.sess, t.msn, t.ra
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
  $8::bigint[], $9::bigint[], $10::text[], $11::int4[], $12::timestamptz[])
  AS t(pair, n, ns, pt, q, bid, ask, e, s, sess, msn, ra)`

// updateMarksSQL keeps a mark without a processed rate (only its epoch raised) at NULL provider_ns.
const updateMarksSQL = `UPDATE ratekeeper.marks m SET provider_ns = NULLIF(t.ns, 0), quote_id = NULLIF(t.q, ''),
  epoch = t.e, ticks = t.n, rolled_up_to = t.r, updated_at = now()
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[]) AS t(pair, ns, q, e, n, r)
WHERE m.pair = t.pair`

// sendAndCommit writes the batch's rows and commits, in one round trip. If a statement fails, the
// server skips the rest, COMMIT included, and the transaction stays open (aborted) for the caller to
// roll back.
func (w *batchWrite) sendAndCommit(ctx context.Context, q Querier) error {
	b := &pgx.Batch{}
	if len(w.tickPair) > 0 {
		b.Queue(insertTicksSQL, w.tickPair, w.tickN, w.tickNs, w.tickTime, w.tickQuote, w.tickBid, w.tickAsk,
			w.tickEpoch, w.tickSeq, w.tickSession, w.tickMsgSeq, w.tickReceived)
		w.candles.queue(b)
	}
	w.candles.queueRollups(b)
	if len(w.markPair) > 0 {
		b.Queue(updateMarksSQL, w.markPair, w.markNs, w.markQuote, w.markEpoch, w.markTicks, w.markRolled)
	}
	b.Queue("COMMIT")
	res := q.SendBatch(ctx, b)
	for range b.Len() - 1 {
		if _, err := res.Exec(); err != nil {
			res.Close()
			return fmt.Errorf("write ticks, candles and marks: %w", err)
		}
	}
	tag, err := res.Exec()
	if err == nil && tag.String() != "COMMIT" {
		err = fmt.Errorf("transaction ended with %s", tag)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
