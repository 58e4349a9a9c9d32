package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kawase-fx/kawase/eventing"
)

// Limits of group commit.
const (
	// groupCommandsMax bounds the commands applied in one database transaction.
	groupCommandsMax = 64
	// outboxStaleMs is the age beyond which an outbox row counts as left behind: rows are published
	// and deleted within milliseconds of their commit, so an older one was not (a publish failed, or
	// the replica died before it published).
	outboxStaleMs = 2_000
)

// Commands are applied in groups. Every command delivered while a round is being applied waits for
// the next round, which applies all of them (at most groupCommandsMax, at most one per account) in
// one transaction of two round trips: BEGIN and every command's lock and reads; then every command's
// writes, inbox entry and outbox rows, and COMMIT. Each command keeps its own inbox entry, result and
// events, exactly as when applied alone; a round only shares the round trips and the commit.
//
// A round's events are published (from memory, as the outbox rows hold them) once it has committed,
// and each command is answered only after that, so the next command of an account — which the ordered
// delivery sends only after this answer — is published after this one by whichever replica applies
// it. A round that finds a redelivered command, or an outbox row left behind (older than
// outboxStaleMs), publishes the whole outbox in id order instead, so events a failed publish or a dead
// replica left are out before anything newer of their accounts. Published rows are deleted in batches
// shortly after (see publisher.deleteLater); the periodic sweep publishes rows older than
// outboxStaleMs that nothing else did.

// request is one command waiting for its round; ctx is its caller's, who stops waiting when it ends.
type request struct {
	ctx     context.Context
	cmd     *eventing.OrderCommandV1
	started time.Time
	done    chan reply
}

// reply is the outcome of a request: the result, whether it is the first result of a command applied
// before, or a transient error.
type reply struct {
	res    eventing.OrderResultV1
	replay bool
	err    error
}

// grouper queues requests and runs rounds, one at a time, in a goroutine that lives while there is
// work.
type grouper struct {
	mu      sync.Mutex
	queue   []*request
	running bool
}

// enqueue adds req and reports whether the caller must start the round loop.
func (g *grouper) enqueue(req *request) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.queue = append(g.queue, req)
	if g.running {
		return false
	}
	g.running = true
	return true
}

// take removes the next round from the queue: up to groupCommandsMax requests, at most one per
// account (later commands of an account wait, in order, for a later round). Requests whose caller
// stopped waiting are dropped unapplied (the caller answered an error, so the command comes again). It
// returns nil and ends the loop when the queue is empty.
func (g *grouper) take() []*request {
	g.mu.Lock()
	defer g.mu.Unlock()
	var round, rest []*request
	accounts := make(map[string]bool, len(g.queue))
	for _, r := range g.queue {
		if r.ctx.Err() != nil {
			continue
		}
		if len(round) < groupCommandsMax && !accounts[r.cmd.AccountID] {
			accounts[r.cmd.AccountID] = true
			round = append(round, r)
			continue
		}
		rest = append(rest, r)
	}
	g.queue = rest
	if len(round) == 0 {
		g.running = false
		return nil
	}
	return round
}

// runRounds applies rounds until the queue is empty.
func (l *Ledger) runRounds() {
	for {
		reqs := l.group.take()
		if reqs == nil {
			return
		}
		l.applyRound(reqs)
	}
}

// roundItem is one command of a committed round.
type roundItem struct {
	req    *request
	res    eventing.OrderResultV1
	replay bool
}

// round is a committed group of commands whose events are still to be published.
type round struct {
	items  []roundItem
	events []outboxEvent
	rowIDs []int64
	// drain: publish the whole outbox in id order instead of events (a redelivered command, or rows
	// left behind).
	drain bool
}

// applyRound commits reqs as one transaction and hands the round to a goroutine that publishes its
// events and answers, so the next round's transaction overlaps this one's publishing. When a round
// of several commands fails on a statement (one command conflicting with another replica, say), each
// command is applied alone, so one command cannot hold the others back.
func (l *Ledger) applyRound(reqs []*request) {
	r, err := l.commitRound(reqs)
	if err == nil {
		go l.finishRound(r)
		return
	}
	var pg *pgconn.PgError
	if len(reqs) > 1 && errors.As(err, &pg) {
		for _, req := range reqs {
			l.applyRound([]*request{req})
		}
		return
	}
	for _, req := range reqs {
		l.answer(req, reply{err: err})
	}
}

// commitRound runs the round's transaction, again after a serialization failure or deadlock.
func (l *Ledger) commitRound(reqs []*request) (*round, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandApplyTimeoutMs*time.Millisecond)
	defer cancel()
	conn, err := l.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("apply %d command(s): %w", len(reqs), err)
	}
	defer conn.Release()
	// Accounts are locked in id order, so rounds of different replicas cannot deadlock.
	reqs = slices.Clone(reqs)
	slices.SortFunc(reqs, func(a, b *request) int { return strings.Compare(a.cmd.AccountID, b.cmd.AccountID) })
	for attempt := 1; ; attempt++ {
		r, err := l.commitOn(ctx, conn.Conn(), reqs)
		if err == nil {
			return r, nil
		}
		if conn.Conn().PgConn().TxStatus() != 'I' {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeoutMs*time.Millisecond)
			// A connection still in the transaction afterwards is closed by the pool on release.
			_, _ = conn.Exec(rctx, "ROLLBACK")
			cancel()
		}
		if !isRetryable(err) || attempt == commandRetryCountMax {
			return nil, fmt.Errorf("apply %d command(s), first %s: %w", len(reqs), reqs[0].cmd.CommandID, err)
		}
		time.Sleep(serializationRetryDelay)
	}
}

// commitOn applies reqs (sorted by account) in one transaction on c: BEGIN and every command's reads;
// then every command's writes, one statement per table for the round (see roundWrites), and COMMIT.
func (l *Ledger) commitOn(ctx context.Context, c *pgx.Conn, reqs []*request) (*round, error) {
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	ccs := make([]*commandContext, len(reqs))
	for i, req := range reqs {
		ccs[i] = queueReads(b, req.cmd)
	}
	var oldest *time.Time // the outbox's oldest row (migrations/00003_outbox_reads.sql says why a function)
	b.Queue(`SELECT ledger.outbox_oldest()`).QueryRow(func(row pgx.Row) error { return row.Scan(&oldest) })
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("begin round: %w", err)
	}
	// PostgreSQL keeps microseconds: the results and events carry exactly the times the rows hold.
	now := time.Now().UTC().Truncate(time.Microsecond)
	r := &round{items: make([]roundItem, 0, len(reqs)), drain: oldest != nil && now.Sub(*oldest) > outboxStaleMs*time.Millisecond}
	var writes roundWrites
	for i, req := range reqs {
		item, events, err := l.decide(&writes, ccs[i], req.cmd, now)
		if err != nil {
			return nil, err
		}
		item.req = req
		r.items = append(r.items, item)
		r.events = append(r.events, events...)
		r.drain = r.drain || item.replay
	}
	w := &pgx.Batch{}
	writes.queue(w, &r.rowIDs)
	w.Queue(`COMMIT`)
	if err := c.SendBatch(ctx, w).Close(); err != nil {
		return nil, fmt.Errorf("write round: %w", err)
	}
	return r, nil
}

// decide applies one command to what was read for it and adds its writes to w.
func (l *Ledger) decide(w *roundWrites, cc *commandContext, cmd *eventing.OrderCommandV1, now time.Time) (roundItem, []outboxEvent, error) {
	if cc.prior != nil {
		return roundItem{res: *cc.prior, replay: true}, nil, nil
	}
	if cc.acct == nil {
		res := unknownAccountResult(cmd, now)
		events, err := resultEvents(res, nil, now)
		if err != nil {
			return roundItem{}, nil, err
		}
		if err := w.addInbox(cmd, res, events); err != nil {
			return roundItem{}, nil, err
		}
		return roundItem{res: res}, events, nil
	}
	t := cc.target
	if cc.foreign && cmd.Kind == eventing.CommandPlace {
		// The order id belongs to another account: placing it here would reuse the id. (To cancel or
		// trigger, another account's order is no order of this one: not found.)
		t.Order = &order{ID: cmd.OrderID, AccountID: cmd.AccountID, Status: StatusRejected}
	}
	eff := newEngine(l, cc.acct, cmd, now).apply(t)
	events, err := resultEvents(eff.Result, eff.Executions, now)
	if err != nil {
		return roundItem{}, nil, err
	}
	if err := w.addEffects(cc.acct, cmd, eff, events); err != nil {
		return roundItem{}, nil, err
	}
	return roundItem{res: eff.Result}, events, nil
}

// finishRound publishes a committed round's events and answers its commands; a failed publish
// answers each with an error, so the commands are redelivered and their retry publishes the outbox.
func (l *Ledger) finishRound(r *round) {
	ctx, cancel := context.WithTimeout(context.Background(), livePublishTimeoutMs*time.Millisecond)
	defer cancel()
	var err error
	if r.drain {
		err = l.pub.drain(ctx, time.Time{})
	} else if err = l.pub.publishEvents(ctx, r.events); err == nil {
		l.pub.deleteLater(r.rowIDs)
	}
	if err != nil {
		l.m.publishErrors.Inc()
		l.log.Warnw("publishing a round's events failed; its commands will be redelivered", "commands", len(r.items), "error", err)
	}
	for _, it := range r.items {
		if err != nil {
			l.answer(it.req, reply{err: fmt.Errorf("apply command %s: committed, not published: %w", it.req.cmd.CommandID, err)})
			continue
		}
		l.answer(it.req, reply{res: it.res, replay: it.replay})
	}
}

// answer records the outcome of req in the metrics and hands it to the waiting caller.
func (l *Ledger) answer(req *request, rep reply) {
	switch {
	case rep.err != nil:
		l.m.commandErrors.Inc()
	default:
		if rep.res.Status == eventing.ResultAccepted {
			l.watch.markDirty()
		}
		outcome := rep.res.Status
		if rep.replay {
			outcome = "replay"
		}
		l.m.commands.WithLabelValues(req.cmd.Kind, outcome).Inc()
		l.m.applySeconds.Observe(time.Since(req.started).Seconds())
	}
	req.done <- rep
}
