package ledger

import (
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// Account currencies the ledger opens accounts in.
const (
	CurrencyJPY fx.Currency = "JPY"
	CurrencyUSD fx.Currency = "USD"
)

// pivotCurrency is the currency every other one has a direct pair with, so any two currencies convert
// through it when they have no pair of their own.
const pivotCurrency fx.Currency = "USD"

// Valuation precision: average prices keep averagePriceDecimalsExtra more decimals than the pair's
// price; conversion rates are computed to conversionDecimals.
const (
	averagePriceDecimalsExtra = 4
	conversionDecimals        = 12
	marginLevelDecimals       = 4
)

// Reasons an order or command is refused; stable snake_case codes shown to clients.
const (
	ReasonNoPrice            = "no_price"
	ReasonNotTradeable       = "not_tradeable"
	ReasonStalePrice         = "stale_price"
	ReasonPriceBound         = "price_bound_exceeded"
	ReasonInsufficientMargin = "insufficient_margin"
	ReasonAccountNotFound    = "account_not_found"
	ReasonOrderNotFound      = "order_not_found"
	ReasonOrderNotPending    = "order_not_pending"
	ReasonDuplicateOrderID   = "duplicate_order_id"
	ReasonDuplicateClientID  = "duplicate_client_order_id"
	ReasonGoodTillPassed     = "good_till_passed"
	ReasonClientRequest      = "client_request"
	ReasonExpired            = "expired"
	ReasonMarginSufficient   = "margin_sufficient"
	ReasonMarginCloseout     = "margin_closeout"
	ReasonNoConversion       = "no_conversion_rate"
)

// errNoQuote marks a valuation that needs a quote the price source does not have.
var errNoQuote = errors.New("no quote")

// roundAmount rounds an amount of currency c to its minor units (half away from zero).
func roundAmount(v decimal.Decimal, c fx.Currency) decimal.Decimal {
	return v.Round(c.MinorUnits())
}

// pricer values amounts and positions at the quotes of a price source.
type pricer struct {
	prices PriceSource
	// conversions, when not nil, remembers each conversion rate computed (see frozenPricer).
	conversions map[[2]fx.Currency]conversionRate
}

// conversionRate is a remembered outcome of pricer.conversion.
type conversionRate struct {
	rate decimal.Decimal
	err  error
}

// frozenPrices is a PriceSource that answers each pair as source did the first time it was asked,
// so everything valued through it sees one set of quotes.
type frozenPrices struct {
	source PriceSource
	quotes map[fx.Pair]frozenQuote
}

type frozenQuote struct {
	q  Quote
	ok bool
}

// Quote answers pair as the source did when first asked.
func (f *frozenPrices) Quote(pair fx.Pair) (Quote, bool) {
	if fq, seen := f.quotes[pair]; seen {
		return fq.q, fq.ok
	}
	q, ok := f.source.Quote(pair)
	f.quotes[pair] = frozenQuote{q, ok}
	return q, ok
}

// frozenPricer values at the quotes of source as they are at its first use of each pair, and computes
// each conversion rate once: the watcher values every account of a round with one, so the round
// costs one conversion per currency instead of two per position, and all its accounts are judged at
// the same prices. Not safe for concurrent use.
func frozenPricer(source PriceSource) pricer {
	return pricer{prices: &frozenPrices{source: source, quotes: make(map[fx.Pair]frozenQuote)},
		conversions: make(map[[2]fx.Currency]conversionRate)}
}

// conversion returns how many units of to one unit of from is worth at mid prices: directly through
// the pair from_to or to_from, else through the pivot currency.
func (p pricer) conversion(from, to fx.Currency) (decimal.Decimal, error) {
	if p.conversions == nil {
		return p.convert(from, to)
	}
	key := [2]fx.Currency{from, to}
	if c, ok := p.conversions[key]; ok {
		return c.rate, c.err
	}
	rate, err := p.convert(from, to)
	p.conversions[key] = conversionRate{rate, err}
	return rate, err
}

func (p pricer) convert(from, to fx.Currency) (decimal.Decimal, error) {
	if from == to {
		return decimal.NewFromInt(1), nil
	}
	if r, ok, err := p.direct(from, to); ok || err != nil {
		return r, err
	}
	if from != pivotCurrency && to != pivotCurrency {
		a, errA := p.conversion(from, pivotCurrency)
		b, errB := p.conversion(pivotCurrency, to)
		if errA == nil && errB == nil {
			return a.Mul(b).Round(conversionDecimals), nil
		}
	}
	return decimal.Zero, fmt.Errorf("%w: converting %s to %s", errNoQuote, from, to)
}

func (p pricer) direct(from, to fx.Currency) (decimal.Decimal, bool, error) {
	if pair := fx.Pair(string(from) + "_" + string(to)); known(pair) {
		q, ok := p.prices.Quote(pair)
		if !ok {
			return decimal.Zero, false, nil
		}
		return q.Mid(), true, nil
	}
	if pair := fx.Pair(string(to) + "_" + string(from)); known(pair) {
		q, ok := p.prices.Quote(pair)
		if !ok {
			return decimal.Zero, false, nil
		}
		return decimal.NewFromInt(1).DivRound(q.Mid(), conversionDecimals), true, nil
	}
	return decimal.Zero, false, nil
}

func known(p fx.Pair) bool {
	_, err := fx.Lookup(p)
	return err == nil
}

// position is an account's net position in one pair.
type position struct {
	Pair fx.Pair
	// Units are signed: long positive, short negative.
	Units        decimal.Decimal
	AveragePrice decimal.Decimal
}

// fillResult is what netting a fill into a position does.
type fillResult struct {
	// After is the position after the fill; zero Units means flat.
	After position
	// Realized is the realized P&L in the pair's quote currency (unrounded).
	Realized decimal.Decimal
}

// net applies a fill of signed units at price to pos (netting: a fill against the position closes
// it first, at its average price, and any rest opens the other way at price).
func net(pos position, units, price decimal.Decimal, precision int32) fillResult {
	u0 := pos.Units
	if u0.IsZero() || u0.Sign() == units.Sign() {
		total := u0.Add(units)
		avg := u0.Abs().Mul(pos.AveragePrice).Add(units.Abs().Mul(price)).
			DivRound(total.Abs(), precision+averagePriceDecimalsExtra)
		return fillResult{After: position{Pair: pos.Pair, Units: total, AveragePrice: avg}}
	}
	closed := decimal.Min(u0.Abs(), units.Abs())
	realized := closed.Mul(price.Sub(pos.AveragePrice))
	if u0.IsNegative() {
		realized = realized.Neg()
	}
	after := u0.Add(units)
	avg := pos.AveragePrice
	switch {
	case after.IsZero():
		avg = decimal.Zero
	case after.Sign() != u0.Sign():
		avg = price
	}
	return fillResult{After: position{Pair: pos.Pair, Units: after, AveragePrice: avg}, Realized: realized}
}

// signedUnits is units as a signed position change: buys add, sells subtract.
func signedUnits(side string, units decimal.Decimal) decimal.Decimal {
	if side == eventing.SideSell {
		return units.Neg()
	}
	return units
}

// valuation is an account's margin figures in its currency.
type valuation struct {
	Balance      decimal.Decimal
	UnrealizedPL decimal.Decimal
	MarginUsed   decimal.Decimal
	// PerPair holds each position's unrealized P&L and margin, in the account currency.
	PerPair map[fx.Pair]pairValue
}

// pairValue is one position's share of a valuation.
type pairValue struct {
	UnrealizedPL decimal.Decimal
	MarginUsed   decimal.Decimal
}

// NAV is balance plus unrealized P&L.
func (v valuation) NAV() decimal.Decimal { return v.Balance.Add(v.UnrealizedPL) }

// MarginAvailable is NAV minus margin used, never below zero.
func (v valuation) MarginAvailable() decimal.Decimal {
	return decimal.Max(v.NAV().Sub(v.MarginUsed), decimal.Zero)
}

// belowCloseout reports whether the margin level is below the close-out level, exactly (NAV below
// margin used × closeoutMarginLevel, no division or rounding); never when no margin is used.
func (v valuation) belowCloseout() bool {
	return v.MarginUsed.IsPositive() && v.NAV().LessThan(v.MarginUsed.Mul(closeoutMarginLevel))
}

// MarginLevel is NAV / margin used; ok is false when no margin is used.
func (v valuation) MarginLevel() (decimal.Decimal, bool) {
	if !v.MarginUsed.IsPositive() {
		return decimal.Zero, false
	}
	return v.NAV().DivRound(v.MarginUsed, conversionDecimals), true
}

// value computes the margin figures of an account in currency ccy with positions at current quotes:
// unrealized P&L at the price each position would close at (bid for longs, ask for shorts) and
// margin at notional (base currency converted at mid) divided by the pair's leverage.
func (p pricer) value(ccy fx.Currency, balance decimal.Decimal, positions map[fx.Pair]position, leverage func(fx.Pair) decimal.Decimal) (valuation, error) {
	return p.valuate(ccy, balance, positions, leverage, true)
}

// totals is value without PerPair, for screening many accounts.
func (p pricer) totals(ccy fx.Currency, balance decimal.Decimal, positions map[fx.Pair]position, leverage func(fx.Pair) decimal.Decimal) (valuation, error) {
	return p.valuate(ccy, balance, positions, leverage, false)
}

func (p pricer) valuate(ccy fx.Currency, balance decimal.Decimal, positions map[fx.Pair]position, leverage func(fx.Pair) decimal.Decimal, perPair bool) (valuation, error) {
	v := valuation{Balance: balance}
	if perPair {
		v.PerPair = make(map[fx.Pair]pairValue, len(positions))
	}
	for pair, pos := range positions {
		spec, closeAt, toAcct, err := p.closing(pair, pos, ccy)
		if err != nil {
			return valuation{}, err
		}
		baseToAcct, err := p.conversion(spec.Base, ccy)
		if err != nil {
			return valuation{}, err
		}
		upl := pos.Units.Mul(closeAt.Sub(pos.AveragePrice)).Mul(toAcct)
		margin := pos.Units.Abs().Mul(baseToAcct).Div(leverage(pair))
		if perPair {
			v.PerPair[pair] = pairValue{UnrealizedPL: upl, MarginUsed: margin}
		}
		v.UnrealizedPL = v.UnrealizedPL.Add(upl)
		v.MarginUsed = v.MarginUsed.Add(margin)
	}
	return v, nil
}

// closing is what valuing pos, the position in pair, in currency ccy starts from: its pair's spec, the price it would close
// at (bid for a long, ask for a short) and the conversion from the pair's quote currency to ccy.
func (p pricer) closing(pair fx.Pair, pos position, ccy fx.Currency) (spec fx.PairSpec, closeAt, toAcct decimal.Decimal, err error) {
	spec, err = fx.Lookup(pair)
	if err != nil {
		return spec, closeAt, toAcct, fmt.Errorf("value position: %w", err)
	}
	q, ok := p.prices.Quote(pair)
	if !ok {
		return spec, closeAt, toAcct, fmt.Errorf("%w: %s", errNoQuote, pair)
	}
	closeAt = q.Bid
	if pos.Units.IsNegative() {
		closeAt = q.Ask
	}
	toAcct, err = p.conversion(spec.Quote, ccy)
	return spec, closeAt, toAcct, err
}

// executable is the quote's price for side: the ask for a buy, the bid for a sell. It refuses a quote
// that is missing, not tradeable or older than ageMax at now, with the reason code.
func (p pricer) executable(pair fx.Pair, side string, now time.Time, ageMax time.Duration) (decimal.Decimal, Quote, string) {
	q, ok := p.prices.Quote(pair)
	if !ok {
		return decimal.Zero, Quote{}, ReasonNoPrice
	}
	if !q.Tradeable {
		return decimal.Zero, q, ReasonNotTradeable
	}
	if now.Sub(q.Time) > ageMax {
		return decimal.Zero, q, ReasonStalePrice
	}
	if side == eventing.SideBuy {
		return q.Ask, q, ""
	}
	return q.Bid, q, ""
}
