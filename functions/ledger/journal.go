package ledger

import (
	"fmt"
	"sort"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// House accounts: the other side of every posting. Funding is where deposits come from, the dealer is
// the counterparty of every trade (it pays the customers' profits and receives their losses), and fx
// converts P&L from a pair's quote currency into the account currency.
const (
	HouseFunding = "house:funding"
	HouseDealer  = "house:dealer"
	HouseFX      = "house:fx"
)

// posting moves amount of currency into (positive) or out of (negative) the book account.
type posting struct {
	Book     string
	Currency fx.Currency
	Amount   decimal.Decimal
}

// entry is the balanced set of postings of one transaction.
type entry []posting

// add appends a transfer of amount in currency from one book to another: two postings that cancel.
func (e *entry) transfer(from, to string, c fx.Currency, amount decimal.Decimal) {
	if amount.IsZero() {
		return
	}
	*e = append(*e, posting{Book: from, Currency: c, Amount: amount.Neg()}, posting{Book: to, Currency: c, Amount: amount})
}

// imbalance returns, per currency, the sum of the postings; all zero for a balanced entry.
func (e entry) imbalance() map[fx.Currency]decimal.Decimal {
	sums := make(map[fx.Currency]decimal.Decimal)
	for _, p := range e {
		sums[p.Currency] = sums[p.Currency].Add(p.Amount)
	}
	for c, s := range sums {
		if s.IsZero() {
			delete(sums, c)
		}
	}
	return sums
}

// mustBalance panics unless every currency of the entry sums to zero: an unbalanced entry means the
// ledger's code is wrong, and writing it would create or destroy money.
func (e entry) mustBalance(what string) {
	off := e.imbalance()
	if len(off) == 0 {
		return
	}
	cs := make([]string, 0, len(off))
	for c, s := range off {
		cs = append(cs, fmt.Sprintf("%s %s", c, s))
	}
	sort.Strings(cs)
	panic(fmt.Sprintf("ledger: unbalanced journal entry for %s: %v", what, cs))
}

// sumFor is the net of the entry's postings to book in currency c.
func (e entry) sumFor(book string, c fx.Currency) decimal.Decimal {
	s := decimal.Zero
	for _, p := range e {
		if p.Book == book && p.Currency == c {
			s = s.Add(p.Amount)
		}
	}
	return s
}
