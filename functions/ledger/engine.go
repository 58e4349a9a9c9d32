package ledger

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// Order statuses.
const (
	StatusPending   = "pending"
	StatusFilled    = "filled"
	StatusRejected  = "rejected"
	StatusCancelled = "cancelled"
	StatusExpired   = "expired"
)

// Transaction types: every change to an account is one of these.
const (
	TxAccountOpen   = "account_open"
	TxOrderAccept   = "order_accept"
	TxOrderFill     = "order_fill"
	TxOrderReject   = "order_reject"
	TxOrderCancel   = "order_cancel"
	TxOrderExpire   = "order_expire"
	TxCloseoutFill  = "closeout_fill"
	TxCommandReject = "command_reject"
)

// Deterministic command id prefixes of the commands the ledger's watcher produces.
const (
	triggerCommandPrefix  = "trigger:"
	expireCommandPrefix   = "expire:"
	closeoutCommandPrefix = "closeout:"
)

// closeoutMarginLevel is the margin level below which an account's positions are closed at market;
// orders may not take the level below minMarginLevel.
var (
	closeoutMarginLevel = decimal.RequireFromString("0.5")
	minMarginLevel      = decimal.NewFromInt(1)
)

// order is an order as the ledger stores it.
type order struct {
	ID            string
	AccountID     string
	Seq           int64
	ClientOrderID string
	Pair          fx.Pair
	Side          string
	Units         decimal.Decimal
	Type          string
	Price         *decimal.Decimal
	PriceBound    *decimal.Decimal
	TimeInForce   string
	GoodTill      *time.Time
	Status        string
	Reason        string
	CommandID     string
	ExecutionID   string
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// execution is one fill.
type execution struct {
	ID         string
	AccountID  string
	AccountSeq int64
	OrderID    string
	Pair       fx.Pair
	Side       string
	Units      decimal.Decimal
	Price      decimal.Decimal
	RealizedPL decimal.Decimal
	Currency   fx.Currency
	Reason     string
	ExecutedAt time.Time
}

// transaction is one change to an account, with its journal entry.
type transaction struct {
	AccountID   string
	ID          int64
	Type        string
	CommandID   string
	OrderID     string
	ExecutionID string
	Pair        fx.Pair
	Side        string
	Units       *decimal.Decimal
	Price       *decimal.Decimal
	Amount      decimal.Decimal
	Balance     decimal.Decimal
	Reason      string
	Time        time.Time
	Entry       entry
}

// accountState is what the engine reads and changes of one locked account.
type accountState struct {
	ID        string
	Currency  fx.Currency
	Balance   decimal.Decimal
	TxSeq     int64
	ExecSeq   int64
	OrderSeq  int64
	CreatedAt time.Time
	Positions map[fx.Pair]position
}

// effects is everything one command changes; the store writes it in the command's transaction.
type effects struct {
	Result       eventing.OrderResultV1
	NewOrders    []*order
	Updated      []*order
	Executions   []execution
	Transactions []transaction
	// Positions holds the changed positions; zero units means the position was closed.
	Positions map[fx.Pair]position
}

// engine applies one command to one account. It is pure: everything it needs is loaded before and
// everything it decides is in effects.
type engine struct {
	prices      pricer
	leverage    func(fx.Pair) decimal.Decimal
	quoteAgeMax time.Duration
	// marketOrderAgeMax is Config.MarketOrderAgeMax.
	marketOrderAgeMax time.Duration
	now               time.Time
	acct              *accountState
	cmd               *eventing.OrderCommandV1
	out               effects
}

// target is the stored state a command refers to, loaded before the engine runs.
type target struct {
	// Order is the order named by the command's OrderID, nil when there is none.
	Order *order
	// ClientOrderIDTaken says whether a live order of the account already has the new order's
	// client order id.
	ClientOrderIDTaken bool
}

func newEngine(l *Ledger, acct *accountState, cmd *eventing.OrderCommandV1, now time.Time) *engine {
	// Frozen per command: the fill's price, the margin check and the valuation all see the quotes as
	// they were at the command's first look, not a quote that changed between two of them.
	e := &engine{prices: frozenPricer(l.prices), leverage: l.leverage, quoteAgeMax: l.cfg.QuoteAgeMax,
		marketOrderAgeMax: l.cfg.MarketOrderAgeMax, now: now, acct: acct, cmd: cmd}
	e.out.Positions = make(map[fx.Pair]position)
	e.out.Result = eventing.OrderResultV1{CommandID: cmd.CommandID, AccountID: cmd.AccountID, OrderID: cmd.OrderID,
		DecidedAt: now}
	return e
}

// apply decides the command and returns its effects.
func (e *engine) apply(t target) effects {
	switch e.cmd.Kind {
	case eventing.CommandPlace:
		e.place(t)
	case eventing.CommandCancel:
		e.cancel(t.Order)
	case eventing.CommandTrigger:
		e.trigger(t.Order)
	case eventing.CommandCloseOut:
		e.closeOut()
	default:
		// Validate refuses unknown kinds before a command gets here.
		panic("ledger: engine got command kind " + e.cmd.Kind)
	}
	return e.out
}

func (e *engine) place(t target) {
	if t.Order != nil {
		e.commandReject(ReasonDuplicateOrderID)
		return
	}
	spec := e.cmd.Order
	e.acct.OrderSeq++
	o := &order{ID: e.cmd.OrderID, AccountID: e.acct.ID, Seq: e.acct.OrderSeq, ClientOrderID: spec.ClientOrderID,
		Pair: spec.Pair, Side: spec.Side, Units: spec.Units, Type: spec.Type, Price: spec.Price,
		PriceBound: spec.PriceBound, TimeInForce: spec.TimeInForce, GoodTill: spec.GoodTill, Status: StatusPending,
		CommandID: e.cmd.CommandID, CreatedAt: e.now, UpdatedAt: e.now}
	e.out.NewOrders = append(e.out.NewOrders, o)
	e.out.Result.Placed = true
	if t.ClientOrderIDTaken {
		e.reject(o, ReasonDuplicateClientID)
		return
	}
	if o.Type == eventing.OrderTypeMarket {
		e.placeMarket(o)
		return
	}
	e.placePending(o)
}

func (e *engine) placeMarket(o *order) {
	if at := e.cmd.RequestedAt; !at.IsZero() && e.now.Sub(at) > e.marketOrderAgeMax {
		// Queued behind an outage or replayed from the dead letters: the trader was answered 202
		// long ago, and a fill now would be at a price they never saw.
		e.reject(o, ReasonExpired)
		return
	}
	price, _, reason := e.prices.executable(o.Pair, o.Side, e.now, e.quoteAgeMax)
	if reason != "" {
		e.reject(o, reason)
		return
	}
	if b := o.PriceBound; b != nil {
		if (o.Side == eventing.SideBuy && price.GreaterThan(*b)) || (o.Side == eventing.SideSell && price.LessThan(*b)) {
			e.reject(o, ReasonPriceBound)
			return
		}
	}
	if reason := e.fill(o, price, eventing.ExecutionReasonOrder, TxOrderFill, true); reason != "" {
		e.reject(o, reason)
	}
}

func (e *engine) placePending(o *order) {
	if o.GoodTill != nil && !o.GoodTill.After(e.now) {
		e.reject(o, ReasonGoodTillPassed)
		return
	}
	// A limit or stop order that is marketable when placed fills at once, as on an exchange.
	if q, ok := e.prices.prices.Quote(o.Pair); ok && q.Tradeable && e.now.Sub(q.Time) <= e.quoteAgeMax && crossed(o, q) {
		if reason := e.fill(o, triggerPrice(o, q, true), eventing.ExecutionReasonOrder, TxOrderFill, true); reason != "" {
			e.reject(o, reason)
		}
		return
	}
	e.record(transaction{Type: TxOrderAccept, OrderID: o.ID, Pair: o.Pair, Side: o.Side, Units: &o.Units, Price: o.Price})
	e.out.Result.Status = eventing.ResultAccepted
}

// crossed reports whether q triggers the pending order o: a limit buy at ask <= price, a stop buy at
// ask >= price, a limit sell at bid >= price, a stop sell at bid <= price.
func crossed(o *order, q Quote) bool {
	p := *o.Price
	switch {
	case o.Type == eventing.OrderTypeLimit && o.Side == eventing.SideBuy:
		return q.Ask.LessThanOrEqual(p)
	case o.Type == eventing.OrderTypeLimit:
		return q.Bid.GreaterThanOrEqual(p)
	case o.Side == eventing.SideBuy:
		return q.Ask.GreaterThanOrEqual(p)
	}
	return q.Bid.LessThanOrEqual(p)
}

// triggerPrice is the fill price of a triggered order: a limit order at its price or better, a stop
// order at the market: the ledger's quote if fresh, else the trigger's if not older. Otherwise
// (the ledger's own stale quote is the latest known, or a trigger issued before triggers carried
// their quote) the order fills at its own price: the trigger saw the price cross, and a stale quote
// may no longer show it.
func triggerPrice(o *order, q Quote, fresh bool) decimal.Decimal {
	if !fresh {
		return *o.Price
	}
	market := q.Ask
	if o.Side == eventing.SideSell {
		market = q.Bid
	}
	if o.Type == eventing.OrderTypeStop {
		return market
	}
	if o.Side == eventing.SideBuy {
		return decimal.Min(market, *o.Price)
	}
	return decimal.Max(market, *o.Price)
}

func (e *engine) cancel(o *order) {
	expiry := strings.HasPrefix(e.cmd.CommandID, expireCommandPrefix)
	switch {
	case o == nil || o.Status != StatusPending:
		reason := ReasonOrderNotFound
		if o != nil {
			reason = ReasonOrderNotPending
		}
		if expiry {
			// The watcher's expiry raced a fill or a cancel of the order: the trader asked for
			// nothing, so nothing goes into their transaction log (as for a late trigger).
			e.out.Result.Status, e.out.Result.Reason = eventing.ResultRejected, reason
			return
		}
		e.commandReject(reason)
		return
	}
	status, reason, txType := StatusCancelled, ReasonClientRequest, TxOrderCancel
	if expiry {
		status, reason, txType = StatusExpired, ReasonExpired, TxOrderExpire
	}
	e.finish(o, status, reason)
	e.record(transaction{Type: txType, OrderID: o.ID, Pair: o.Pair, Side: o.Side, Units: &o.Units, Reason: reason})
	e.out.Result.Status = eventing.ResultCancelled
	e.out.Result.Reason = reason
}

func (e *engine) trigger(o *order) {
	switch {
	case o == nil:
		e.out.Result.Status, e.out.Result.Reason = eventing.ResultRejected, ReasonOrderNotFound
		return
	case o.Status != StatusPending:
		// A trigger seen again after the order was filled, cancelled or expired changes nothing.
		e.out.Result.Status, e.out.Result.Reason = eventing.ResultRejected, ReasonOrderNotPending
		return
	}
	if o.GoodTill != nil && !o.GoodTill.After(e.now) {
		e.finish(o, StatusExpired, ReasonExpired)
		e.record(transaction{Type: TxOrderExpire, OrderID: o.ID, Pair: o.Pair, Side: o.Side, Units: &o.Units, Reason: ReasonExpired})
		e.out.Result.Status, e.out.Result.Reason = eventing.ResultCancelled, ReasonExpired
		return
	}
	q, ok := e.prices.prices.Quote(o.Pair)
	fresh := ok && q.Tradeable && e.now.Sub(q.Time) <= e.quoteAgeMax
	if tq := e.cmd.TriggerQuote; !fresh && tq != nil && tq.Pair == o.Pair && (!ok || !tq.Time.Before(q.Time)) {
		// The ledger's own quote went stale, and the one the trigger saw cross the price is as new
		// (normally the same quote: the watcher prices from this book) or newer: it is the latest
		// market known, and it crossed.
		q, fresh = Quote{Pair: tq.Pair, Bid: tq.Bid, Ask: tq.Ask, Time: tq.Time, Tradeable: true, QuoteID: e.cmd.TriggerRateID}, true
		// The margin check and the valuation then see the same quote as the fill (nothing has
		// been converted at the stale one yet).
		if fp, ok := e.prices.prices.(*frozenPrices); ok {
			fp.quotes[q.Pair] = frozenQuote{q: q, ok: true}
		}
	}
	if reason := e.fill(o, triggerPrice(o, q, fresh), eventing.ExecutionReasonTrigger, TxOrderFill, true); reason != "" {
		e.reject(o, reason)
	}
}

// closeOut closes every position of the account at market when its margin level is below the
// close-out level; otherwise it changes nothing.
func (e *engine) closeOut() {
	v, err := e.prices.value(e.acct.Currency, e.acct.Balance, e.acct.Positions, e.leverage)
	if err != nil {
		e.out.Result.Status, e.out.Result.Reason = eventing.ResultRejected, ReasonNoPrice
		return
	}
	if !v.belowCloseout() {
		e.out.Result.Status, e.out.Result.Reason = eventing.ResultRejected, ReasonMarginSufficient
		return
	}
	pairs := make([]fx.Pair, 0, len(e.acct.Positions))
	for p := range e.acct.Positions {
		pairs = append(pairs, p)
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i] < pairs[j] })
	closed, skipped := 0, ""
	for _, pair := range pairs {
		if reason := e.closePosition(e.acct.Positions[pair]); reason != "" {
			skipped = reason
			continue
		}
		closed++
	}
	if closed == 0 {
		// Every position's pair is stale or halted: nothing is closed at a price that may be long
		// gone; the watcher asks again while the account stays below the line.
		e.out.Result.Status, e.out.Result.Reason = eventing.ResultRejected, skipped
		return
	}
	e.out.Result = eventing.OrderResultV1{CommandID: e.cmd.CommandID, AccountID: e.acct.ID,
		Status: eventing.ResultFilled, Reason: ReasonMarginCloseout, DecidedAt: e.now}
}

// closePosition closes pos at market; a pair without a fresh, tradeable quote is left open (its
// reason returned) for a later close-out, like a market order would be refused.
func (e *engine) closePosition(pos position) string {
	side := eventing.SideSell
	if pos.Units.IsNegative() {
		side = eventing.SideBuy
	}
	price, _, reason := e.prices.executable(pos.Pair, side, e.now, e.quoteAgeMax)
	if reason != "" {
		return reason
	}
	e.acct.OrderSeq++
	o := &order{ID: closeoutOrderID(e.cmd.CommandID, pos.Pair), AccountID: e.acct.ID, Seq: e.acct.OrderSeq,
		Pair: pos.Pair, Side: side, Units: pos.Units.Abs(), Type: eventing.OrderTypeMarket,
		TimeInForce: eventing.TimeInForceFOK, Status: StatusPending, Reason: ReasonMarginCloseout,
		CommandID: e.cmd.CommandID, CreatedAt: e.now, UpdatedAt: e.now}
	e.out.NewOrders = append(e.out.NewOrders, o)
	if reason := e.fill(o, price, eventing.ExecutionReasonCloseout, TxCloseoutFill, false); reason != "" {
		panic("ledger: close-out fill refused: " + reason)
	}
	o.Reason = ReasonMarginCloseout
	return ""
}

// closeoutOrderID names the order closing pair in a close-out command, deterministically.
func closeoutOrderID(commandID string, pair fx.Pair) string {
	h := sha256.Sum256([]byte(commandID))
	return "co_" + hex.EncodeToString(h[:8]) + "_" + string(pair)
}

// ExecutionID is the id of the execution that fills order orderID (an order fills at most once).
func ExecutionID(orderID string) string { return "x_" + orderID }

// fill executes o at price: nets the position, books the realized P&L (converted to the account
// currency) against the dealer, and records the execution. With checkMargin it refuses (returning
// the reason, changing nothing) a fill that would raise the margin used while leaving the margin
// level below 100%.
func (e *engine) fill(o *order, price decimal.Decimal, execReason, txType string, checkMargin bool) string {
	spec, err := fx.Lookup(o.Pair)
	if err != nil {
		panic("ledger: order of unknown pair " + string(o.Pair))
	}
	pos, ok := e.acct.Positions[o.Pair]
	if !ok {
		pos = position{Pair: o.Pair}
	}
	res := net(pos, signedUnits(o.Side, o.Units), price, spec.Precision)
	realizedQuote := roundAmount(res.Realized, spec.Quote)
	conv, err := e.prices.conversion(spec.Quote, e.acct.Currency)
	if err != nil {
		return ReasonNoConversion
	}
	realized := roundAmount(realizedQuote.Mul(conv), e.acct.Currency)
	if checkMargin {
		if reason := e.checkMargin(res.After, realized); reason != "" {
			return reason
		}
	}
	var je entry
	if spec.Quote == e.acct.Currency {
		je.transfer(HouseDealer, e.acct.ID, e.acct.Currency, realized)
	} else {
		je.transfer(HouseDealer, HouseFX, spec.Quote, realizedQuote)
		je.transfer(HouseFX, e.acct.ID, e.acct.Currency, realized)
	}
	e.acct.Balance = e.acct.Balance.Add(realized)
	e.acct.Positions[o.Pair] = res.After
	if res.After.Units.IsZero() {
		delete(e.acct.Positions, o.Pair)
	}
	e.out.Positions[o.Pair] = res.After
	e.acct.ExecSeq++
	x := execution{ID: ExecutionID(o.ID), AccountID: e.acct.ID, AccountSeq: e.acct.ExecSeq, OrderID: o.ID,
		Pair: o.Pair, Side: o.Side, Units: o.Units, Price: price, RealizedPL: realized, Currency: e.acct.Currency,
		Reason: execReason, ExecutedAt: e.now}
	e.out.Executions = append(e.out.Executions, x)
	o.ExecutionID = x.ID
	e.finish(o, StatusFilled, "")
	e.record(transaction{Type: txType, OrderID: o.ID, ExecutionID: x.ID, Pair: o.Pair, Side: o.Side, Units: &o.Units,
		Price: &x.Price, Amount: realized, Entry: je})
	e.out.Result.OrderID = o.ID
	e.out.Result.Status = eventing.ResultFilled
	e.out.Result.ExecutionID = x.ID
	p, pl := price, realized
	e.out.Result.Price, e.out.Result.AccountSeq, e.out.Result.RealizedPL, e.out.Result.Currency = &p, x.AccountSeq, &pl, x.Currency
	return ""
}

func (e *engine) checkMargin(after position, realized decimal.Decimal) string {
	if after.Units.Abs().LessThanOrEqual(e.acct.Positions[after.Pair].Units.Abs()) {
		// The position shrinks (or flips smaller): its margin falls and the account's NAV stays (the
		// profit or loss moves from unrealized to the balance), so the margin level can only rise.
		// Valuing the whole account would refuse a trader cutting risk because some other pair of
		// theirs has no quote.
		return ""
	}
	before, err := e.prices.value(e.acct.Currency, e.acct.Balance, e.acct.Positions, e.leverage)
	if err != nil {
		return ReasonNoConversion
	}
	positions := make(map[fx.Pair]position, len(e.acct.Positions)+1)
	for p, pos := range e.acct.Positions {
		positions[p] = pos
	}
	delete(positions, after.Pair)
	if !after.Units.IsZero() {
		positions[after.Pair] = after
	}
	v, err := e.prices.value(e.acct.Currency, e.acct.Balance.Add(realized), positions, e.leverage)
	if err != nil {
		return ReasonNoConversion
	}
	if !v.MarginUsed.GreaterThan(before.MarginUsed) {
		return ""
	}
	if v.NAV().LessThan(v.MarginUsed.Mul(minMarginLevel)) {
		return ReasonInsufficientMargin
	}
	return ""
}

// reject marks o rejected with reason and records the rejection.
func (e *engine) reject(o *order, reason string) {
	e.finish(o, StatusRejected, reason)
	e.record(transaction{Type: TxOrderReject, OrderID: o.ID, Pair: o.Pair, Side: o.Side, Units: &o.Units, Reason: reason})
	e.out.Result.OrderID = o.ID
	e.out.Result.Status = eventing.ResultRejected
	e.out.Result.Reason = reason
	e.out.Result.ExecutionID = ""
	e.out.Result.Price, e.out.Result.AccountSeq, e.out.Result.RealizedPL, e.out.Result.Currency = nil, 0, nil, ""
}

// commandReject records a client command that could not be carried out (no order changed).
func (e *engine) commandReject(reason string) {
	e.record(transaction{Type: TxCommandReject, OrderID: e.cmd.OrderID, Reason: reason})
	e.out.Result.Status = eventing.ResultRejected
	e.out.Result.Reason = reason
}

// finish moves o to a final status; a new order is inserted with it, a stored one updated.
func (e *engine) finish(o *order, status, reason string) {
	o.Status, o.Reason, o.UpdatedAt = status, reason, e.now
	for _, n := range e.out.NewOrders {
		if n == o {
			return
		}
	}
	for _, u := range e.out.Updated {
		if u == o {
			return
		}
	}
	e.out.Updated = append(e.out.Updated, o)
}

// record appends the next transaction of the account; its journal entry must balance.
func (e *engine) record(t transaction) {
	e.acct.TxSeq++
	t.AccountID, t.ID, t.CommandID, t.Time, t.Balance = e.acct.ID, e.acct.TxSeq, e.cmd.CommandID, e.now, e.acct.Balance
	t.Entry.mustBalance(e.cmd.CommandID)
	if got := t.Entry.sumFor(e.acct.ID, e.acct.Currency); !got.Equal(t.Amount) {
		panic("ledger: transaction amount " + t.Amount.String() + " but postings to the account sum to " + got.String())
	}
	e.out.Transactions = append(e.out.Transactions, t)
}
