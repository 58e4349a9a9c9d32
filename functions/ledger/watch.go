package ledger

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// Limits of the watcher.
const (
	watcherLockID        = 0x6b617761_7365_7774 // "kawase" "wt": one active watcher among the replicas
	leaderPollMs         = 2_000
	leaderPingMs         = 2_000
	watcherSendTimeoutMs = 10_000
	// screenRebuildMs is how often the close-out screen values every account at fresh reference
	// quotes; in between, the quotes' drift from the reference makes more accounts candidates.
	screenRebuildMs = 5_000
)

// watcher turns what prices and time do to the book into commands on the accounts' partitions:
//
//   - a pending limit/stop order whose trigger price is crossed gets "trigger:<orderId>";
//   - a GTD order past its goodTill gets "expire:<orderId>" (a cancel);
//   - an account whose margin level is below 50% gets "closeout:<accountId>:<txSeq>:<second>".
//
// It does not change the book itself. The commands travel on kawase.commands keyed by account, like
// every client command, so they are applied in order with the account's other commands by the same
// transaction-per-command path; their ids are deterministic, so the inbox turns a trigger sent twice
// (by a resend, a second watcher during a leadership change, or the ratekeeper sending the same
// trigger) into one fill, and a trigger that finds its order no longer pending changes nothing.
//
// The watcher runs in the ledger's replicas; a PostgreSQL session advisory lock makes one of them
// active. It reads the ledger's own tables (pending orders, positions) in whole at start and every
// BookReload, in between every BookRefresh only the accounts the change log (changes.go) names, and
// evaluates them at the latest quotes every WatchInterval.
type watcher struct {
	l      *Ledger
	writer *kafka.Writer
	dirty  atomic.Bool
	sent   map[string]time.Time
	book   []pendingOrder
	accts  []marginAccount
	loaded time.Time
	// snapshot is the database snapshot of the last read of the book (pg_snapshot as text; empty:
	// the next read is of the whole book), and fullAt the time of the last whole read.
	snapshot string
	fullAt   time.Time
	// screen holds the accounts' slack at its reference quotes (screen.go); nil until the first round.
	screen *marginScreen
	// reloaded is set when accts was reloaded since the screen last saw it.
	reloaded bool
}

// pendingOrder is what the watcher needs of a pending order.
type pendingOrder struct {
	order
}

// marginAccount is what the watcher needs of an account with positions.
type marginAccount struct {
	ID        string
	Currency  fx.Currency
	Balance   decimal.Decimal
	TxSeq     int64
	Positions map[fx.Pair]position
}

func newWatcher(l *Ledger, brokers []string) *watcher {
	return &watcher{l: l, writer: cekafka.NewWriter(brokers, eventing.TopicCommands), sent: make(map[string]time.Time)}
}

func (w *watcher) close() { _ = w.writer.Close() }

// markDirty asks for a reload of the book at the next interval (a pending order was placed here).
func (w *watcher) markDirty() { w.dirty.Store(true) }

// run competes for the watcher lock and watches while holding it, until ctx ends.
func (w *watcher) run(ctx context.Context) error {
	for {
		err := w.lead(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.l.log.Warnw("watcher stopped; retrying", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(leaderPollMs * time.Millisecond):
		}
	}
}

// lead takes a dedicated connection out of the pool, waits for the session lock on it and watches
// while the connection is healthy. Closing the connection releases the lock.
func (w *watcher) lead(ctx context.Context) error {
	pc, err := w.l.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("watcher: %w", err)
	}
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, int64(watcherLockID)).Scan(&got); err != nil {
			return fmt.Errorf("watcher lock: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(leaderPollMs * time.Millisecond):
		}
	}
	w.l.log.Infow("watcher active")
	return w.watch(ctx, conn)
}

func (w *watcher) watch(ctx context.Context, conn *pgx.Conn) error {
	w.snapshot = "" // a new term starts from the whole book
	tick := time.NewTicker(w.l.cfg.WatchInterval)
	defer tick.Stop()
	lastPing := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if time.Since(lastPing) > leaderPingMs*time.Millisecond {
			if err := conn.Ping(ctx); err != nil {
				return fmt.Errorf("watcher lost its lock connection: %w", err)
			}
			lastPing = time.Now()
		}
		// time.Now keeps its monotonic reading (UTC would strip it): the reload and gap checks are
		// durations of this process's clock, like the change log's pruning (see changes.go).
		if err := w.tick(ctx, time.Now()); err != nil {
			w.l.m.watcherErrors.WithLabelValues("round").Inc()
			w.l.log.Warnw("watcher round failed; the next round tries again", "error", err)
		}
	}
}

// tick runs one round at now: reload the book when due, then send the commands it calls for. now
// should carry a monotonic reading, so that a step of the wall clock cannot hide a gap longer than the
// change log keeps (a step back still forces a reload).
func (w *watcher) tick(ctx context.Context, now time.Time) error {
	if w.dirty.Swap(false) || now.Sub(w.loaded) >= w.l.cfg.BookRefresh || now.Before(w.loaded) {
		full := w.snapshot == "" || now.Sub(w.fullAt) >= w.l.cfg.BookReload || now.Before(w.fullAt) ||
			now.Sub(w.loaded) >= bookChangesGapMaxMs*time.Millisecond
		read := w.readChanges
		if full {
			read = w.reload
		}
		err := read(ctx)
		if errors.Is(err, errChangesPruned) {
			full, err = true, w.reload(ctx)
		}
		if err != nil {
			w.snapshot = "" // read the whole book next time
			return err
		}
		if w.loaded = now; full {
			w.fullAt = now
		}
	}
	events := w.evaluate(now.UTC())
	if len(events) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, watcherSendTimeoutMs*time.Millisecond)
	defer cancel()
	if err := cekafka.Publish(ctx, w.writer, events...); err != nil {
		// Forget what was not sent, so the next round sends it again.
		for _, e := range events {
			delete(w.sent, sentKey(e.ID()))
		}
		return fmt.Errorf("watcher: %w", err)
	}
	return nil
}

// reload reads every pending order and every account with positions, after taking the snapshot
// that the next readChanges starts from.
func (w *watcher) reload(ctx context.Context) error {
	snap, err := readBookSnapshot(ctx, w.l.pool)
	if err != nil {
		return err
	}
	book, err := readPendingBook(ctx, w.l, nil)
	if err != nil {
		return err
	}
	accts, err := readMarginAccounts(ctx, w.l, nil)
	if err != nil {
		return err
	}
	w.book, w.accts, w.reloaded, w.snapshot = book, accts, true, snap
	w.l.m.bookReads.WithLabelValues("full").Inc()
	return nil
}

// readChanges reads again the pending orders and positions of the accounts changed since the last
// read. Those reads may see later changes too; the next readChanges reads those accounts again.
func (w *watcher) readChanges(ctx context.Context) error {
	ids, snap, err := readBookChanges(ctx, w.l.pool, w.snapshot)
	if err != nil {
		return err
	}
	w.l.m.bookReads.WithLabelValues("changes").Inc()
	if len(ids) == 0 {
		w.snapshot = snap
		return nil
	}
	book, err := readPendingBook(ctx, w.l, ids)
	if err != nil {
		return err
	}
	accts, err := readMarginAccounts(ctx, w.l, ids)
	if err != nil {
		return err
	}
	changed := make(map[string]bool, len(ids))
	for _, id := range ids {
		changed[id] = true
	}
	w.book, w.accts = splicePending(w.book, changed, book), spliceAccounts(w.accts, changed, accts)
	w.reloaded, w.snapshot = true, snap
	return nil
}

// readPendingBook reads the pending orders of the accounts in ids (nil: of every account).
func readPendingBook(ctx context.Context, l *Ledger, ids []string) ([]pendingOrder, error) {
	sql, args := orderSelect+` WHERE o.status = 'pending'`, []any(nil)
	if ids != nil { // separate statements, so each keeps a plan of its own
		sql, args = sql+` AND o.account_id = ANY($1)`, []any{ids}
	}
	rows, err := l.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("watcher: read pending orders: %w", err)
	}
	defer rows.Close()
	var book []pendingOrder
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, fmt.Errorf("watcher: %w", err)
		}
		book = append(book, pendingOrder{*o})
	}
	return book, rows.Err()
}

// readMarginAccounts reads the accounts in ids (nil: every account) that have positions.
func readMarginAccounts(ctx context.Context, l *Ledger, ids []string) ([]marginAccount, error) {
	sql, args := `SELECT a.id, a.currency, a.balance, a.tx_seq, p.pair, p.units, p.average_price
		FROM ledger.accounts a JOIN ledger.positions p ON p.account_id = a.id`, []any(nil)
	if ids != nil {
		sql, args = sql+` WHERE a.id = ANY($1)`, []any{ids}
	}
	rows, err := l.pool.Query(ctx, sql+` ORDER BY a.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("watcher: read positions: %w", err)
	}
	defer rows.Close()
	var out []marginAccount
	for rows.Next() {
		var a marginAccount
		var p position
		if err := rows.Scan(&a.ID, &a.Currency, &a.Balance, &a.TxSeq, &p.Pair, &p.Units, &p.AveragePrice); err != nil {
			return nil, fmt.Errorf("watcher: read positions: %w", err)
		}
		if n := len(out); n == 0 || out[n-1].ID != a.ID {
			a.Positions = make(map[fx.Pair]position)
			out = append(out, a)
		}
		out[len(out)-1].Positions[p.Pair] = p
	}
	return out, rows.Err()
}

// evaluate returns the commands the book calls for at now, skipping any sent within TriggerResend.
func (w *watcher) evaluate(now time.Time) []cloudevents.Event {
	var out []cloudevents.Event
	send := func(cmd eventing.OrderCommandV1, kind string) {
		key := sentKey(cmd.CommandID)
		if at, ok := w.sent[key]; ok && now.Sub(at) < w.l.cfg.TriggerResend {
			return
		}
		e, err := eventing.NewEventFrom(eventing.TypeOrderCommand, eventing.SourceLedger, cmd.CommandID, &cmd)
		if err != nil {
			panic(fmt.Sprintf("ledger: watcher built an invalid command: %v", err))
		}
		w.sent[key] = now
		w.l.m.triggers.WithLabelValues(kind).Inc()
		out = append(out, e)
	}
	live := make(map[string]bool, len(w.book)+len(w.accts))
	p := frozenPricer(w.l.prices)
	for i := range w.book {
		o := &w.book[i].order
		if cmd, kind, ok := w.orderCommand(p, o, now); ok {
			live[sentKey(cmd.CommandID)] = true
			send(cmd, kind)
		}
	}
	for _, a := range w.belowCloseout(p, now) {
		if !w.closable(p, a, now) {
			// The close-out would close nothing (every position's pair stale or halted) and be sent
			// again every TriggerResend for as long as that lasts; it goes once a price is back.
			continue
		}
		cmd := eventing.OrderCommandV1{Kind: eventing.CommandCloseOut, AccountID: a.ID, RequestedAt: now,
			CommandID: closeoutCommandPrefix + a.ID + ":" + strconv.FormatInt(a.TxSeq, 10) + ":" + strconv.FormatInt(now.Unix(), 10)}
		live[sentKey(cmd.CommandID)] = true
		send(cmd, "closeout")
	}
	for k := range w.sent {
		if !live[k] {
			delete(w.sent, k)
		}
	}
	return out
}

// closable reports whether a close-out of a would close anything: some position of it has a quote it
// could be closed at (fresh and tradeable, as the ledger requires).
func (w *watcher) closable(p pricer, a marginAccount, now time.Time) bool {
	for pair, pos := range a.Positions {
		side := eventing.SideSell
		if pos.Units.IsNegative() {
			side = eventing.SideBuy
		}
		if _, _, reason := p.executable(pair, side, now, w.l.cfg.QuoteAgeMax); reason == "" {
			return true
		}
	}
	return false
}

// belowCloseout returns the accounts whose margin level is below the close-out level at p's quotes.
// Every screenRebuildMs it values every account and keeps each one's slack at those quotes (the
// reference); an account that a reload finds changed is valued again at the reference. Other rounds
// value only the accounts whose slack the quotes' move from the reference may have used up; when
// that is most of them, the next round rebuilds the reference.
func (w *watcher) belowCloseout(p pricer, now time.Time) []marginAccount {
	if w.screen == nil || now.Sub(w.screen.built) >= screenRebuildMs*time.Millisecond || now.Before(w.screen.built) {
		screen, below := newMarginScreen(p, w.accts, w.l.leverage, now)
		w.screen, w.reloaded = screen, false
		w.l.m.valuations.Add(float64(len(w.accts)))
		return below
	}
	if w.reloaded {
		w.screen.update(w.accts, w.l.leverage)
		w.reloaded = false
	}
	candidates := w.screen.candidates(w.screen.movePPB(p))
	w.l.m.valuations.Add(float64(len(candidates)))
	if len(candidates)*2 > len(w.screen.accts) {
		w.screen.built = time.Time{}
	}
	var below []marginAccount
	for _, a := range candidates {
		if v, err := p.totals(a.Currency, a.Balance, a.Positions, w.l.leverage); err == nil && v.belowCloseout() {
			below = append(below, a.marginAccount)
		}
	}
	return below
}

// orderCommand is the command a pending order calls for at now, if any.
func (w *watcher) orderCommand(p pricer, o *order, now time.Time) (eventing.OrderCommandV1, string, bool) {
	if o.GoodTill != nil && !o.GoodTill.After(now) {
		return eventing.OrderCommandV1{CommandID: expireCommandPrefix + o.ID, Kind: eventing.CommandCancel,
			AccountID: o.AccountID, OrderID: o.ID, RequestedAt: now}, "expire", true
	}
	q, ok := p.prices.Quote(o.Pair)
	if !ok || !q.Tradeable || now.Sub(q.Time) > w.l.cfg.QuoteAgeMax || !crossed(o, q) {
		return eventing.OrderCommandV1{}, "", false
	}
	return eventing.OrderCommandV1{CommandID: triggerCommandPrefix + o.ID, Kind: eventing.CommandTrigger,
		AccountID: o.AccountID, OrderID: o.ID, TriggerRateID: q.QuoteID, RequestedAt: now,
		TriggerQuote: &eventing.TriggerQuote{Pair: o.Pair, Bid: q.Bid, Ask: q.Ask, Time: q.Time}}, "trigger", true
}

// sentKey is what the resend suppression remembers a command by: the command id without the
// close-out's time bucket, so a close-out is not resent every second.
func sentKey(commandID string) string {
	if rest, ok := strings.CutPrefix(commandID, closeoutCommandPrefix); ok {
		if i := strings.LastIndexByte(rest, ':'); i >= 0 {
			return closeoutCommandPrefix + rest[:i]
		}
	}
	return commandID
}
