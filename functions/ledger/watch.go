package ledger

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	// notifyDrainMinMs is the least time a round waits for notifications, so a round that overran
	// its interval still reads those already arrived.
	notifyDrainMinMs = 1
	// changedAccountsMax bounds the accounts notified between two rounds; past it the next round reads
	// the whole book instead.
	changedAccountsMax = 20_000
	// screenRebuildMs is how often the close-out screen values every account at fresh reference
	// quotes; in between, the quotes' drift from the reference makes more accounts candidates.
	screenRebuildMs = 5_000
)

// bookChannel is the channel rounds NOTIFY with the ids of the accounts they changed, comma-separated.
const bookChannel = "kawase_ledger_book"

// notifyPayloadBytesMax keeps a notification under PostgreSQL's 8000-byte payload limit.
const notifyPayloadBytesMax = 7_900

// queueBookNotify adds to b the notifications of a round that changed the accounts ids: as few as
// fit the payload limit. They are delivered when (and only if) the round commits, in commit order.
func queueBookNotify(b *pgx.Batch, ids []string) {
	var payloads []string
	var cur strings.Builder
	for _, id := range ids {
		if cur.Len() > 0 && cur.Len()+1+len(id) > notifyPayloadBytesMax {
			payloads = append(payloads, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(',')
		}
		cur.WriteString(id)
	}
	if cur.Len() > 0 {
		payloads = append(payloads, cur.String())
	}
	if len(payloads) > 0 {
		b.Queue(`SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`, bookChannel, payloads)
	}
}

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
// active. It holds the book (pending orders, accounts with positions) in memory and evaluates it at
// the latest quotes every WatchInterval. It reads the whole book from the ledger's own tables when it
// becomes active and every BookRefresh; in between, every round's transaction NOTIFYs bookChannel
// with the accounts it changed, and the watcher reads just those again before its next evaluation.
// So its database work follows the trading, not the number of accounts.
type watcher struct {
	l      *Ledger
	writer *kafka.Writer
	sent   map[string]time.Time
	// book holds the pending orders by account, and accts the accounts with positions.
	book  map[string][]pendingOrder
	accts map[string]marginAccount
	// loaded is when the whole book was last read; changed holds the accounts notified since.
	loaded  time.Time
	changed map[string]bool
	// screen holds the accounts' slack at its reference quotes (screen.go); nil until the first round
	// after a whole-book reload.
	screen *marginScreen
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
	return &watcher{l: l, writer: cekafka.NewWriter(brokers, eventing.TopicCommands), sent: make(map[string]time.Time),
		book: make(map[string][]pendingOrder), accts: make(map[string]marginAccount), changed: make(map[string]bool)}
}

func (w *watcher) close() { _ = w.writer.Close() }

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
	// Listen before the first whole-book read: a change committed after it is notified, one
	// committed before it is in the read.
	if _, err := conn.Exec(ctx, "LISTEN "+bookChannel); err != nil {
		return fmt.Errorf("watcher: listen: %w", err)
	}
	w.loaded = time.Time{}
	w.l.log.Infow("watcher active")
	return w.watch(ctx, conn)
}

func (w *watcher) watch(ctx context.Context, conn *pgx.Conn) error {
	next := time.Now()
	lastPing := next
	for {
		if err := w.collect(ctx, conn, next); err != nil {
			return err
		}
		next = next.Add(w.l.cfg.WatchInterval)
		if time.Since(lastPing) > leaderPingMs*time.Millisecond {
			if err := conn.Ping(ctx); err != nil {
				return fmt.Errorf("watcher lost its lock connection: %w", err)
			}
			lastPing = time.Now()
		}
		if err := w.tick(ctx, time.Now().UTC()); err != nil {
			w.l.log.Warnw("watcher round failed", "error", err)
		}
		if now := time.Now(); next.Before(now) { // overran: no burst of rounds to catch up
			next = now
		}
	}
}

// collect adds the accounts that committed rounds notify to w.changed until the deadline, or for
// notifyDrainMinMs when the last round overran it. Past changedAccountsMax it asks for a whole-book
// reload instead.
func (w *watcher) collect(ctx context.Context, conn *pgx.Conn, deadline time.Time) error {
	if earliest := time.Now().Add(notifyDrainMinMs * time.Millisecond); deadline.Before(earliest) {
		deadline = earliest
	}
	for {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && pgconn.Timeout(err):
			return nil
		case err != nil:
			return fmt.Errorf("watcher: wait for book changes: %w", err)
		}
		for id := range strings.SplitSeq(n.Payload, ",") {
			if id != "" {
				w.changed[id] = true
			}
		}
		if len(w.changed) > changedAccountsMax {
			w.loaded, w.changed = time.Time{}, make(map[string]bool)
		}
	}
}

// tick runs one round at now: read the whole book when due, else the accounts notified since the
// last round, then send the commands the book calls for.
func (w *watcher) tick(ctx context.Context, now time.Time) error {
	if err := w.refresh(ctx, now); err != nil {
		return err
	}
	events := w.evaluate(now)
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

// refresh reads the whole book every BookRefresh (and first), else the notified accounts. A failed
// read leaves the accounts to read for the next round.
func (w *watcher) refresh(ctx context.Context, now time.Time) error {
	if w.loaded.IsZero() || now.Sub(w.loaded) >= w.l.cfg.BookRefresh || now.Before(w.loaded) {
		changed := w.changed
		w.changed = make(map[string]bool)
		if err := w.reload(ctx); err != nil {
			w.changed = changed
			return err
		}
		w.loaded, w.screen = now, nil
		return nil
	}
	if len(w.changed) == 0 {
		return nil
	}
	if err := w.reloadAccounts(ctx, w.changed); err != nil {
		return err
	}
	w.accountsChanged(w.changed)
	w.changed = make(map[string]bool)
	return nil
}

// accountsChanged tells the screen that the accounts in ids were read again.
func (w *watcher) accountsChanged(ids map[string]bool) {
	if w.screen != nil {
		w.screen.update(ids, w.accts, w.l.leverage)
	}
}

// reload reads every pending order and every account with positions.
func (w *watcher) reload(ctx context.Context) error {
	book, err := readPendingBook(ctx, w.l, nil)
	if err != nil {
		return err
	}
	accts, err := readMarginAccounts(ctx, w.l, nil)
	if err != nil {
		return err
	}
	w.book, w.accts = book, accts
	return nil
}

// reloadAccounts reads again the pending orders and positions of the accounts in ids.
func (w *watcher) reloadAccounts(ctx context.Context, ids map[string]bool) error {
	list := slices.Collect(maps.Keys(ids))
	book, err := readPendingBook(ctx, w.l, list)
	if err != nil {
		return err
	}
	accts, err := readMarginAccounts(ctx, w.l, list)
	if err != nil {
		return err
	}
	for _, id := range list {
		delete(w.book, id)
		delete(w.accts, id)
	}
	maps.Copy(w.book, book)
	maps.Copy(w.accts, accts)
	return nil
}

// readPendingBook reads the pending orders of the accounts in ids (all accounts when ids is nil), by
// account, each account's in the order they were placed.
func readPendingBook(ctx context.Context, l *Ledger, ids []string) (map[string][]pendingOrder, error) {
	q, args := orderSelect+` WHERE o.status = 'pending' ORDER BY o.account_id, o.seq`, []any(nil)
	if ids != nil {
		q, args = orderSelect+` WHERE o.status = 'pending' AND o.account_id = ANY($1) ORDER BY o.account_id, o.seq`, []any{ids}
	}
	rows, err := l.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("watcher: read pending orders: %w", err)
	}
	defer rows.Close()
	book := make(map[string][]pendingOrder)
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, fmt.Errorf("watcher: %w", err)
		}
		book[o.AccountID] = append(book[o.AccountID], pendingOrder{*o})
	}
	return book, rows.Err()
}

// readMarginAccounts reads the accounts in ids that have positions (all of them when ids is nil).
func readMarginAccounts(ctx context.Context, l *Ledger, ids []string) (map[string]marginAccount, error) {
	const sel = `SELECT a.id, a.currency, a.balance, a.tx_seq, p.pair, p.units, p.average_price
		FROM ledger.accounts a JOIN ledger.positions p ON p.account_id = a.id`
	q, args := sel, []any(nil)
	if ids != nil {
		q, args = sel+` WHERE a.id = ANY($1)`, []any{ids}
	}
	rows, err := l.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("watcher: read positions: %w", err)
	}
	defer rows.Close()
	out := make(map[string]marginAccount)
	for rows.Next() {
		var a marginAccount
		var p position
		if err := rows.Scan(&a.ID, &a.Currency, &a.Balance, &a.TxSeq, &p.Pair, &p.Units, &p.AveragePrice); err != nil {
			return nil, fmt.Errorf("watcher: read positions: %w", err)
		}
		if known, ok := out[a.ID]; ok {
			a = known
		} else {
			a.Positions = make(map[fx.Pair]position)
		}
		a.Positions[p.Pair] = p
		out[a.ID] = a
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
	for _, orders := range w.book {
		for i := range orders {
			if cmd, kind, ok := w.orderCommand(p, &orders[i].order, now); ok {
				live[sentKey(cmd.CommandID)] = true
				send(cmd, kind)
			}
		}
	}
	for _, a := range w.belowCloseout(p, now) {
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

// belowCloseout returns the accounts whose margin level is below the close-out level at p's quotes.
// Every screenRebuildMs it values every account and keeps each one's slack at those quotes (the
// reference); an account read again since is valued again at the reference. Other rounds
// value only the accounts whose slack the quotes' move from the reference may have used up; when
// that is most of them, the next round rebuilds the reference.
func (w *watcher) belowCloseout(p pricer, now time.Time) []marginAccount {
	if w.screen == nil || now.Sub(w.screen.built) >= screenRebuildMs*time.Millisecond || now.Before(w.screen.built) {
		screen, below := newMarginScreen(p, w.accts, w.l.leverage, now)
		w.screen = screen
		w.l.m.valuations.Add(float64(len(w.accts)))
		return below
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
		AccountID: o.AccountID, OrderID: o.ID, TriggerRateID: q.QuoteID, RequestedAt: now}, "trigger", true
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
