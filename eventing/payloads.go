package eventing

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// ErrInvalid marks a payload that fails validation; it can never be accepted, so consumers treat it
// as permanent.
var ErrInvalid = errors.New("invalid event payload")

// ErrUnknownType is returned for an event type that is not in the catalogue.
var ErrUnknownType = errors.New("unknown event type")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// RateV1 is one top-of-book quote for a pair, as received by the feeder from the FIX provider.
type RateV1 struct {
	Pair    fx.Pair         `json:"pair"`
	Bid     decimal.Decimal `json:"bid"`
	Ask     decimal.Decimal `json:"ask"`
	BidSize decimal.Decimal `json:"bidSize"`
	AskSize decimal.Decimal `json:"askSize"`
	// ProviderTime is the provider's MDEntryDate/MDEntryTime of the quote.
	ProviderTime time.Time `json:"providerTime"`
	// QuoteID is the provider's QuoteEntryID; it rises per pair.
	QuoteID string `json:"quoteId"`
	// Session is the FIX session the quote arrived on (BeginString:Sender->Target).
	Session string `json:"session"`
	// MsgSeqNum is the FIX MsgSeqNum of the message that carried the quote.
	MsgSeqNum int `json:"msgSeqNum"`
	// Epoch is the feeder leader's fencing token; it rises with every leadership change.
	Epoch int64 `json:"epoch"`
	// Seq is the feeder's per-pair sequence within its epoch.
	Seq int64 `json:"seq"`
	// ReceivedAt is when the feeder read the quote off the FIX session.
	ReceivedAt time.Time `json:"receivedAt"`
}

// PartitionKey orders rates per pair.
func (r *RateV1) PartitionKey() string { return string(r.Pair) }

// labelCharsMax bounds a quote's id and session name, in characters as the schema counts them: far
// above any provider's, and far below what a PostgreSQL index entry holds (the tick history is
// unique on the quote id) even at four bytes a character.
const labelCharsMax = 128

// checkLabel refuses an identifier that is too long, not UTF-8, or holds a control character (which
// PostgreSQL's text refuses, NUL above all): found only when a batch of ticks is written, it would
// fail every rate in the batch instead of the one.
func checkLabel(v string) error {
	if !utf8.ValidString(v) {
		return errors.New("not UTF-8")
	}
	if n := utf8.RuneCountInString(v); n > labelCharsMax {
		return fmt.Errorf("%d characters, at most %d", n, labelCharsMax)
	}
	for _, c := range v {
		if unicode.IsControl(c) {
			return fmt.Errorf("control character %U", c)
		}
	}
	return nil
}

// Bounds of a real quote (RateV1.CheckRange).
const (
	// providerTimeAheadMaxMs is how far ahead of the reader's clock a provider time may be.
	providerTimeAheadMaxMs = 60_000
	// priceBandFactor bounds a price to [mid/factor, mid*factor] of the pair's reference mid: a price
	// outside is a corrupt quote, not a market move.
	priceBandFactor = 10
)

// providerTimeMin is the earliest provider time accepted; anything before is a corrupt timestamp.
var providerTimeMin = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrOutOfRange marks a well-formed rate whose time or price cannot be a real quote; like ErrInvalid
// it is permanent.
var ErrOutOfRange = errors.New("rate out of range")

// CheckRange refuses a validated rate whose provider time or prices cannot be real. Every reader that
// keeps a per-pair high-water mark (the feeder before publishing, the ratekeeper, every rates replica)
// applies it: a provider time far in the future would become the pair's mark and make every real rate
// after it look old, freezing the pair.
func (r *RateV1) CheckRange(now time.Time) error {
	if r.ProviderTime.Before(providerTimeMin) {
		return fmt.Errorf("%w: %s provider time %s is before %s", ErrOutOfRange, r.Pair,
			r.ProviderTime.Format(time.RFC3339), providerTimeMin.Format(time.RFC3339))
	}
	if r.ProviderTime.Sub(now) > providerTimeAheadMaxMs*time.Millisecond {
		return fmt.Errorf("%w: %s provider time %s is more than %d ms ahead of %s", ErrOutOfRange, r.Pair,
			r.ProviderTime.Format(time.RFC3339Nano), providerTimeAheadMaxMs, now.Format(time.RFC3339Nano))
	}
	spec, err := fx.Lookup(r.Pair)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOutOfRange, err)
	}
	band := priceBands()[r.Pair]
	for _, p := range []decimal.Decimal{r.Bid, r.Ask} {
		if p.LessThan(band.low) || p.GreaterThan(band.high) {
			return fmt.Errorf("%w: %s price %s is outside %s..%s", ErrOutOfRange, r.Pair, p,
				spec.FormatPrice(band.low), spec.FormatPrice(band.high))
		}
	}
	return nil
}

type priceBand struct{ low, high decimal.Decimal }

// priceBands are the pairs' price bands, made once: CheckRange runs for every quote in every reader.
var priceBands = sync.OnceValue(func() map[fx.Pair]priceBand {
	factor := decimal.NewFromInt(priceBandFactor)
	bands := make(map[fx.Pair]priceBand, len(fx.Pairs()))
	for _, spec := range fx.Pairs() {
		bands[spec.Pair] = priceBand{low: spec.ReferenceMid.Div(factor), high: spec.ReferenceMid.Mul(factor)}
	}
	return bands
})

// Validate checks the pair, prices, precision and identity of the quote.
func (r *RateV1) Validate() error {
	spec, err := fx.Lookup(r.Pair)
	if err != nil {
		return invalidf("%v", err)
	}
	for _, p := range []decimal.Decimal{r.Bid, r.Ask} {
		if err := spec.CheckPrice(p); err != nil {
			return invalidf("%v", err)
		}
	}
	for _, size := range []decimal.Decimal{r.BidSize, r.AskSize} {
		if err := fx.CheckMagnitude(size); err != nil {
			return invalidf("%s size: %v", r.Pair, err)
		}
	}
	if r.Bid.GreaterThan(r.Ask) {
		return invalidf("%s crossed quote: bid %s > ask %s", r.Pair, r.Bid, r.Ask)
	}
	if r.BidSize.IsNegative() || r.AskSize.IsNegative() {
		return invalidf("%s negative size", r.Pair)
	}
	if r.ProviderTime.IsZero() || r.QuoteID == "" {
		return invalidf("%s quote lacks provider time or quote id", r.Pair)
	}
	for _, f := range []struct{ name, v string }{{"quote id", r.QuoteID}, {"session", r.Session}} {
		if err := checkLabel(f.v); err != nil {
			return invalidf("%s %s: %v", r.Pair, f.name, err)
		}
	}
	if r.MsgSeqNum < 0 || r.MsgSeqNum > math.MaxInt32 {
		return invalidf("%s msgSeqNum %d is outside 0..%d", r.Pair, r.MsgSeqNum, math.MaxInt32)
	}
	if r.Epoch <= 0 {
		return invalidf("%s quote has no feeder epoch", r.Pair)
	}
	return nil
}

// EventID is deterministic in the provider's identity of the quote, so the same quote published twice
// (by a retry or by two feeders) carries the same id.
func (r *RateV1) EventID() string { return string(r.AppendEventID(nil)) }

// AppendEventID appends EventID to b, for an encoder that writes it without building a string.
func (r *RateV1) AppendEventID(b []byte) []byte {
	b = append(append(append(b, "rate:"...), r.Pair...), ':')
	b = r.ProviderTime.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(append(b, ':'), r.QuoteID...)
}

// NewerThan reports whether r is strictly newer than o by provider time, then quote id. Quote ids are
// compared as numbers when both are numeric and as strings otherwise.
func (r *RateV1) NewerThan(o *RateV1) bool {
	if !r.ProviderTime.Equal(o.ProviderTime) {
		return r.ProviderTime.After(o.ProviderTime)
	}
	return CompareQuoteIDs(r.QuoteID, o.QuoteID) > 0
}

// CompareQuoteIDs orders two provider quote ids: unsigned integers by value (a provider counting
// up), before every other id, which are ordered as strings. It is a total order, so that a mix of
// formats cannot make a cycle ("2" < "10" < "1a" < "2" when each pair is compared its own way); two
// ids equal in value but written differently ("010", "10") are ordered as strings rather than taken
// for one quote. It returns -1, 0 or +1.
func CompareQuoteIDs(a, b string) int {
	na, errA := strconv.ParseUint(a, 10, 64)
	nb, errB := strconv.ParseUint(b, 10, 64)
	switch {
	case errA == nil && errB != nil:
		return -1
	case errA != nil && errB == nil:
		return 1
	case errA == nil && na != nb:
		return cmp.Compare(na, nb)
	}
	return strings.Compare(a, b)
}

// Order sides, types, time-in-force values and command kinds.
const (
	SideBuy  = "buy"
	SideSell = "sell"

	OrderTypeMarket = "market"
	OrderTypeLimit  = "limit"
	OrderTypeStop   = "stop"

	TimeInForceFOK = "FOK"
	TimeInForceIOC = "IOC"
	TimeInForceGTC = "GTC"
	TimeInForceGTD = "GTD"

	CommandPlace    = "place"
	CommandCancel   = "cancel"
	CommandTrigger  = "trigger"
	CommandCloseOut = "closeout"
)

// OrderSpec is what a trader asks for when placing an order.
type OrderSpec struct {
	Pair          fx.Pair          `json:"pair"`
	Side          string           `json:"side"`
	Units         decimal.Decimal  `json:"units"`
	Type          string           `json:"type"`
	Price         *decimal.Decimal `json:"price,omitempty"`
	PriceBound    *decimal.Decimal `json:"priceBound,omitempty"`
	TimeInForce   string           `json:"timeInForce"`
	GoodTill      *time.Time       `json:"goodTill,omitempty"`
	ClientOrderID string           `json:"clientOrderId,omitempty"`
}

// OrderCommandV1 asks the ledger to change an account; every command about one account travels on
// that account's partition, so the ledger applies them in order.
type OrderCommandV1 struct {
	// CommandID is the ledger's inbox key: a retry of the same command carries the same id.
	CommandID string `json:"commandId"`
	Kind      string `json:"kind"`
	AccountID string `json:"accountId"`
	// OrderID names the order the command places, cancels or triggers.
	OrderID string     `json:"orderId"`
	Order   *OrderSpec `json:"order,omitempty"`
	// TriggerRateID is the id of the rate that triggered a pending order (kind trigger).
	TriggerRateID string `json:"triggerRateId,omitempty"`
	// TriggerQuote is the rate that triggered a pending order (kind trigger): the ledger fills a stop
	// order at its market, and a limit order at that or better, when its own price of the pair has
	// gone stale by the time it applies the trigger. Absent from triggers issued before it existed.
	TriggerQuote *TriggerQuote `json:"triggerQuote,omitempty"`
	RequestedAt  time.Time     `json:"requestedAt"`
}

// TriggerQuote is the quote a trigger saw cross a pending order's price.
type TriggerQuote struct {
	Pair fx.Pair         `json:"pair"`
	Bid  decimal.Decimal `json:"bid"`
	Ask  decimal.Decimal `json:"ask"`
	// Time is the provider's time of the quote.
	Time time.Time `json:"time"`
}

// Validate checks the quote's pair, prices (at the pair's precision, not crossed) and time.
func (q *TriggerQuote) Validate() error {
	spec, err := fx.Lookup(q.Pair)
	if err != nil {
		return invalidf("triggerQuote: %v", err)
	}
	if err := spec.CheckPrice(q.Bid); err != nil {
		return invalidf("triggerQuote bid: %v", err)
	}
	if err := spec.CheckPrice(q.Ask); err != nil {
		return invalidf("triggerQuote ask: %v", err)
	}
	if q.Ask.LessThan(q.Bid) {
		return invalidf("triggerQuote is crossed: ask %s below bid %s", q.Ask, q.Bid)
	}
	if q.Time.IsZero() {
		return invalidf("triggerQuote lacks its time")
	}
	return nil
}

// PartitionKey orders commands per account.
func (c *OrderCommandV1) PartitionKey() string { return c.AccountID }

// Validate checks that the command names its account and carries what its kind needs.
func (c *OrderCommandV1) Validate() error {
	if c.CommandID == "" || c.AccountID == "" {
		return invalidf("command lacks command id or account id")
	}
	switch c.Kind {
	case CommandPlace:
		if c.Order == nil || c.OrderID == "" {
			return invalidf("place command %s lacks its order", c.CommandID)
		}
		return c.Order.Validate()
	case CommandCancel, CommandTrigger:
		if c.OrderID == "" {
			return invalidf("%s command %s lacks an order id", c.Kind, c.CommandID)
		}
		if c.TriggerQuote != nil {
			if c.Kind != CommandTrigger {
				return invalidf("a %s command takes no triggerQuote", c.Kind)
			}
			return c.TriggerQuote.Validate()
		}
	case CommandCloseOut:
	default:
		return invalidf("unknown command kind %q", c.Kind)
	}
	return nil
}

// Validate checks an order's pair, side, units, type, prices and time in force.
func (o *OrderSpec) Validate() error {
	spec, err := fx.Lookup(o.Pair)
	if err != nil {
		return invalidf("%v", err)
	}
	if o.Side != SideBuy && o.Side != SideSell {
		return invalidf("side must be buy or sell, not %q", o.Side)
	}
	if err := fx.CheckMagnitude(o.Units); err != nil {
		return invalidf("units: %v", err)
	}
	if !o.Units.IsPositive() || !o.Units.IsInteger() {
		return invalidf("units must be a positive whole number, not %s", o.Units)
	}
	switch o.Type {
	case OrderTypeMarket:
		return o.validateMarket(spec)
	case OrderTypeLimit, OrderTypeStop:
		return o.validatePending(spec)
	}
	return invalidf("type must be market, limit or stop, not %q", o.Type)
}

func (o *OrderSpec) validateMarket(spec fx.PairSpec) error {
	if o.Price != nil {
		return invalidf("a market order takes priceBound, not price")
	}
	if o.TimeInForce != TimeInForceFOK && o.TimeInForce != TimeInForceIOC {
		return invalidf("a market order's timeInForce is FOK or IOC, not %q", o.TimeInForce)
	}
	if o.PriceBound != nil {
		if err := spec.CheckPrice(*o.PriceBound); err != nil {
			return invalidf("priceBound: %v", err)
		}
	}
	return nil
}

func (o *OrderSpec) validatePending(spec fx.PairSpec) error {
	if o.Price == nil {
		return invalidf("a %s order needs a price", o.Type)
	}
	if err := spec.CheckPrice(*o.Price); err != nil {
		return invalidf("price: %v", err)
	}
	switch o.TimeInForce {
	case TimeInForceGTC:
		if o.GoodTill != nil {
			return invalidf("goodTill is only for GTD orders")
		}
	case TimeInForceGTD:
		if o.GoodTill == nil {
			return invalidf("a GTD order needs goodTill")
		}
	default:
		return invalidf("a %s order's timeInForce is GTC or GTD, not %q", o.Type, o.TimeInForce)
	}
	return nil
}

// Execution reasons (TradeExecutedV1.Reason): an order filled when placed, a pending order triggered
// by the price, or a position closed out for want of margin.
const (
	ExecutionReasonOrder    = "order"
	ExecutionReasonTrigger  = "trigger"
	ExecutionReasonCloseout = "closeout"
)

// TradeExecutedV1 reports one execution (fill) to downstream systems; the external system dedups by
// ExecutionID and orders by AccountSeq.
type TradeExecutedV1 struct {
	ExecutionID string `json:"executionId"`
	AccountID   string `json:"accountId"`
	// AccountSeq numbers the account's executions 1, 2, 3, … without gaps.
	AccountSeq int64           `json:"accountSeq"`
	OrderID    string          `json:"orderId"`
	Pair       fx.Pair         `json:"pair"`
	Side       string          `json:"side"`
	Units      decimal.Decimal `json:"units"`
	Price      decimal.Decimal `json:"price"`
	// RealizedPL is in the account currency.
	RealizedPL decimal.Decimal `json:"realizedPL"`
	Currency   fx.Currency     `json:"currency"`
	// Reason is "order", "trigger" or "closeout".
	Reason     string    `json:"reason"`
	ExecutedAt time.Time `json:"executedAt"`
}

// PartitionKey orders executions per account.
func (t *TradeExecutedV1) PartitionKey() string { return t.AccountID }

// Validate checks the identity, sequence and amounts of the execution.
func (t *TradeExecutedV1) Validate() error {
	if t.ExecutionID == "" || t.AccountID == "" || t.OrderID == "" {
		return invalidf("execution lacks execution, account or order id")
	}
	if t.AccountSeq <= 0 {
		return invalidf("execution %s has account sequence %d", t.ExecutionID, t.AccountSeq)
	}
	if t.Side != SideBuy && t.Side != SideSell {
		return invalidf("execution %s side %q", t.ExecutionID, t.Side)
	}
	if !t.Units.IsPositive() || !t.Price.IsPositive() {
		return invalidf("execution %s has non-positive units or price", t.ExecutionID)
	}
	if _, err := fx.Lookup(t.Pair); err != nil {
		return invalidf("%v", err)
	}
	return nil
}

// Order result statuses.
const (
	ResultAccepted  = "accepted"
	ResultFilled    = "filled"
	ResultRejected  = "rejected"
	ResultCancelled = "cancelled"
)

// OrderResultV1 reports what the ledger did with a command, so trading can answer synchronously.
type OrderResultV1 struct {
	CommandID   string           `json:"commandId"`
	AccountID   string           `json:"accountId"`
	OrderID     string           `json:"orderId"`
	Status      string           `json:"status"`
	Reason      string           `json:"reason,omitempty"`
	ExecutionID string           `json:"executionId,omitempty"`
	Price       *decimal.Decimal `json:"price,omitempty"`
	// AccountSeq, RealizedPL and Currency complete the fill's execution as kawase.trade.executed.v1
	// carries it (executed at DecidedAt); present with ExecutionID. With them and Placed, whoever
	// placed the order shows it as the ledger recorded it without asking the ledger again.
	AccountSeq int64            `json:"accountSeq,omitempty"`
	RealizedPL *decimal.Decimal `json:"realizedPL,omitempty"`
	Currency   fx.Currency      `json:"currency,omitempty"`
	// Placed says the command recorded a new order at DecidedAt (pending, filled or rejected), which
	// is the command's order spec with this outcome; false when a placement was refused before any
	// order was recorded (a duplicate order id, an unknown account) and for other commands.
	Placed    bool      `json:"placed,omitempty"`
	DecidedAt time.Time `json:"decidedAt"`
}

// PartitionKey orders results per account.
func (r *OrderResultV1) PartitionKey() string { return r.AccountID }

// Validate checks the result's identity and status.
func (r *OrderResultV1) Validate() error {
	if r.CommandID == "" || r.AccountID == "" {
		return invalidf("result lacks command id or account id")
	}
	switch r.Status {
	case ResultAccepted, ResultFilled, ResultRejected, ResultCancelled:
		return nil
	}
	return invalidf("result status %q", r.Status)
}
