package ledger

import (
	"cmp"
	"slices"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// The margin screen spares the watcher from valuing every account at every WatchInterval. Each time
// the book is reloaded it values every account exactly, at one frozen set of quotes (the reference),
// and works out for each the slack: the relative move of every quote that the account can take, in
// any direction, before its margin level could fall below the close-out level. Until the next reload,
// a round first measures how far any quote has moved from the reference, and values exactly only the
// accounts whose slack is at most that move. In quiet markets most accounts are far from a
// close-out, so a round costs a few decimal divisions per pair plus the accounts near the line.
//
// The bound. Let every quote (bid and ask of every pair) move from its reference by a factor within
// [1/(1+e), 1+e], with e ≤ 0.1. A conversion rate is a mid, its inverse, or the product of two, so it
// moves by a factor f within (1+e)²; a position's close price by a factor g within 1+e. A position
// of u units with average price a, close price c and conversion t from the quote currency has
// unrealized P&L u·t·(c − a), which moves by
//
//	|u·t·((c − a)(f − 1) + c·f·(g − 1))| ≤ |u|·t·(2.1e·|c − a| + 1.21e·c)
//
// since (1+e)² − 1 ≤ 2.1e and (1+e)² ≤ 1.21 for e ≤ 0.1. Margin used M grows by at most the factor
// (1+e)², so by at most 2.1e·M. With A = Σ|u|·t·(1.21·c + 2.1·|c − a|) at the reference, the account
// stays at or above the close-out level L while
//
//	NAV − L·M ≥ e·(A + 2.1·L·M),
//
// so its slack is e = (NAV − L·M) / (A + 2.1·L·M), capped at 0.1. The headroom NAV − L·M is first cut
// by screenToleranceRatio·(A + M), far above the rounding of conversions (12 decimals) and of
// divisions (16 digits), so the screen stays conservative however the valuation rounds.

// screenToleranceRatio is the part of an account's exposure taken off its headroom before its slack
// is computed, to cover rounding in the valuation.
var screenToleranceRatio = decimal.New(1, -6)

// screenSlackMax caps a slack; the bound is derived for moves up to 10%.
var screenSlackMax = decimal.New(1, -1)

// screenRateFactor bounds ((1+e)² − 1)/e and screenPriceFactor bounds (1+e)², for e ≤ screenSlackMax.
var (
	screenRateFactor  = decimal.New(21, -1)
	screenPriceFactor = decimal.New(121, -2)
)

// slackScale is the unit of slacks and moves once the screen compares them: parts per billion, a
// slack rounded down and a move rounded up, so the comparison stays conservative.
var slackScale = decimal.New(1, 9)

// screenedAccount is an account with positions and its slack at the reference quotes, in parts per
// billion.
type screenedAccount struct {
	marginAccount
	slackPPB int64
}

// marginScreen is the watcher's reference quotes and its accounts in order of slack.
type marginScreen struct {
	ref *frozenPrices
	// atRef values accounts that change after the reference at its quotes. A pair it was not asked
	// for until then is frozen at its quote of that moment and joins the reference, so movePPB
	// follows it from there (answering "no quote" instead would send a conversion through the pivot,
	// a path later rounds do not take).
	atRef pricer
	built time.Time
	accts []screenedAccount
}

// newMarginScreen values accts exactly at p's quotes, which become the reference, and returns the
// screen with each account's slack and the accounts now below the close-out level.
func newMarginScreen(p pricer, accts []marginAccount, leverage func(fx.Pair) decimal.Decimal, now time.Time) (*marginScreen, []marginAccount) {
	ref := p.prices.(*frozenPrices)
	s := &marginScreen{ref: ref, built: now, accts: make([]screenedAccount, 0, len(accts)),
		atRef: pricer{prices: ref, conversions: p.conversions}}
	var below []marginAccount
	for _, a := range accts {
		slack, isBelow := p.slack(a, leverage)
		if isBelow {
			below = append(below, a)
		}
		s.accts = append(s.accts, screenedAccount{marginAccount: a, slackPPB: slackPPB(slack)})
	}
	s.sort()
	return s, below
}

// update replaces the screen's accounts with accts: an account whose transaction sequence is the
// one screened keeps its slack; a new or changed one is valued at the reference quotes (see atRef).
func (s *marginScreen) update(accts []marginAccount, leverage func(fx.Pair) decimal.Decimal) {
	screened := make(map[string]screenedAccount, len(s.accts))
	for _, a := range s.accts {
		screened[a.ID] = a
	}
	s.accts = s.accts[:0:0]
	for _, a := range accts {
		if old, ok := screened[a.ID]; ok && old.TxSeq == a.TxSeq {
			s.accts = append(s.accts, screenedAccount{marginAccount: a, slackPPB: old.slackPPB})
			continue
		}
		slack, _ := s.atRef.slack(a, leverage)
		s.accts = append(s.accts, screenedAccount{marginAccount: a, slackPPB: slackPPB(slack)})
	}
	s.sort()
}

func (s *marginScreen) sort() {
	slices.SortStableFunc(s.accts, func(x, y screenedAccount) int { return cmp.Compare(x.slackPPB, y.slackPPB) })
}

// slackPPB is a slack in parts per billion, rounded down.
func slackPPB(slack decimal.Decimal) int64 { return slack.Mul(slackScale).Floor().IntPart() }

// slack is how far every quote may move from p's before a could fall below the close-out level, and
// whether it is below it now. An account that cannot be valued has no slack: it is valued every round.
func (p pricer) slack(a marginAccount, leverage func(fx.Pair) decimal.Decimal) (decimal.Decimal, bool) {
	v, err := p.totals(a.Currency, a.Balance, a.Positions, leverage)
	if err != nil {
		return decimal.Zero, false
	}
	if v.belowCloseout() {
		return decimal.Zero, true
	}
	exposure, err := p.exposure(a)
	if err != nil {
		return decimal.Zero, false
	}
	lm := v.MarginUsed.Mul(closeoutMarginLevel)
	headroom := v.NAV().Sub(lm).Sub(exposure.Add(v.MarginUsed).Mul(screenToleranceRatio))
	if !headroom.IsPositive() {
		return decimal.Zero, false
	}
	return decimal.Min(headroom.Div(exposure.Add(lm.Mul(screenRateFactor))), screenSlackMax), false
}

// exposure is A of the bound: Σ |units|·conversion·(1.21·close price + 2.1·|close − average price|)
// in the account's currency, at p's quotes.
func (p pricer) exposure(a marginAccount) (decimal.Decimal, error) {
	sum := decimal.Zero
	for pair, pos := range a.Positions {
		_, closeAt, toAcct, err := p.closing(pair, pos, a.Currency)
		if err != nil {
			return decimal.Zero, err
		}
		perUnit := closeAt.Mul(screenPriceFactor).Add(closeAt.Sub(pos.AveragePrice).Abs().Mul(screenRateFactor))
		sum = sum.Add(pos.Units.Abs().Mul(perUnit).Mul(toAcct))
	}
	return sum, nil
}

// movePPB is the largest relative move of any quote from the reference to p's quotes, in parts per
// billion rounded up: |now − ref| / min(now, ref) over every bid and ask the reference holds, so a
// fall counts as the rise that would undo it. The reference holds every pair a screened valuation
// asked for, with or without a quote. It is the largest slack when a quote the reference had is gone
// or not positive, or when a pair asked for without a quote has one now (a valuation could take
// another path).
func (s *marginScreen) movePPB(p pricer) int64 {
	largest := decimal.Zero
	for pair, ref := range s.ref.quotes {
		q, ok := p.prices.Quote(pair)
		if ok != ref.ok {
			return slackPPB(screenSlackMax)
		}
		if !ok {
			continue
		}
		for _, side := range [2][2]decimal.Decimal{{ref.q.Bid, q.Bid}, {ref.q.Ask, q.Ask}} {
			low := decimal.Min(side[0], side[1])
			if !low.IsPositive() {
				return slackPPB(screenSlackMax)
			}
			if m := side[1].Sub(side[0]).Abs().Div(low); m.GreaterThan(largest) {
				largest = m
			}
		}
	}
	return largest.Mul(slackScale).Ceil().IntPart()
}

// candidates are the accounts whose slack is at most movePPB: the only ones a round at that move
// must value.
func (s *marginScreen) candidates(movePPB int64) []screenedAccount {
	n, _ := slices.BinarySearchFunc(s.accts, movePPB, func(a screenedAccount, m int64) int {
		if a.slackPPB > m {
			return 1
		}
		return -1
	})
	return s.accts[:n]
}
