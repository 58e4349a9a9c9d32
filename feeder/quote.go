package feeder

import (
	"errors"
	"fmt"
	"time"

	"github.com/quickfixgo/enum"
	"github.com/quickfixgo/tag"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// mdEntryTimestampLayout parses MDEntryDate(272) "20060102" and MDEntryTime(273) "15:04:05[.fff…]".
const mdEntryTimestampLayout = "20060102 15:04:05.999999999"

// errIncompleteQuote marks a quote without both a bid and an offer.
var errIncompleteQuote = errors.New("quote lacks a bid or an offer")

// quoteSide is one side of a top of book as the provider sent it.
type quoteSide struct {
	px, size decimal.Decimal
	at       time.Time
	quoteID  string
	set      bool
}

// topOfBook is a pair's best bid and offer.
type topOfBook struct {
	bid, offer quoteSide
}

// readSide reads one NoMDEntries(268) entry of a 35=W or 35=X as a side of a book.
func readSide(e fixspec.Fields) (enum.MDEntryType, quoteSide, error) {
	typ, ok := e.Get(tag.MDEntryType)
	if !ok {
		return "", quoteSide{}, errors.New("quote lacks MDEntryType(269)")
	}
	s := quoteSide{set: true}
	px, ok := e.Get(tag.MDEntryPx)
	if !ok {
		return enum.MDEntryType(typ), s, errors.New("quote lacks MDEntryPx(270)")
	}
	var err error
	if s.px, err = quoteDecimal(px); err != nil {
		return enum.MDEntryType(typ), s, fmt.Errorf("MDEntryPx(270) %q: %w", px, err)
	}
	if size, ok := e.Get(tag.MDEntrySize); ok {
		s.size, _ = quoteDecimal(size) // optional: a size that does not read is none
	}
	date, dok := e.Get(tag.MDEntryDate)
	clock, tok := e.Get(tag.MDEntryTime)
	if !dok || !tok {
		return enum.MDEntryType(typ), s, errors.New("quote lacks MDEntryDate(272) or MDEntryTime(273)")
	}
	if s.at, err = entryTime(date, clock); err != nil {
		return enum.MDEntryType(typ), s, fmt.Errorf("MDEntryDate(272)/MDEntryTime(273) %q %q: %w", date, clock, err)
	}
	id, ok := e.Get(tag.QuoteEntryID)
	if !ok {
		return enum.MDEntryType(typ), s, errors.New("quote lacks QuoteEntryID(299)")
	}
	s.quoteID = string(id)
	return enum.MDEntryType(typ), s, nil
}

// quoteDigitsMax is the most digits quoteDecimal reads itself (an int64 holds any 18).
const quoteDigitsMax = 18

// quoteDecimal reads a price or size as decimal.NewFromString does, without the strings it builds:
// digits with an optional minus and point directly, anything else through NewFromString.
func quoteDecimal(b []byte) (decimal.Decimal, error) {
	digits := b
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	var n int64
	count, point := 0, -1
	for i, c := range digits {
		switch {
		case c >= '0' && c <= '9':
			n = n*10 + int64(c-'0')
			count++
		case c == '.' && point < 0 && i > 0 && i < len(digits)-1:
			point = i
		default:
			return decimal.NewFromString(string(b))
		}
	}
	if count == 0 || count > quoteDigitsMax {
		return decimal.NewFromString(string(b))
	}
	exp := 0
	if point >= 0 {
		exp = point + 1 - len(digits)
	}
	if len(digits) < len(b) {
		n = -n
	}
	return decimal.New(n, int32(exp)), nil
}

// entryTime reads MDEntryDate(272) and MDEntryTime(273) as time.Parse does with
// mdEntryTimestampLayout, without building the string it needs: the common shapes directly, anything
// else through time.Parse.
func entryTime(date, clock []byte) (time.Time, error) {
	if t, ok := fixspec.DateAndClock(date, clock); ok {
		return t, nil
	}
	return time.Parse(mdEntryTimestampLayout, string(date)+" "+string(clock))
}

// apply sets or clears one side.
func (b *topOfBook) apply(typ enum.MDEntryType, s quoteSide) {
	switch typ {
	case enum.MDEntryType_BID:
		b.bid = s
	case enum.MDEntryType_OFFER:
		b.offer = s
	}
}

// snapshotBook reads a MarketDataSnapshotFullRefresh (35=W): Symbol(55) and the bid and offer
// entries of NoMDEntries(268).
func snapshotBook(body fixspec.Fields) ([]byte, topOfBook, error) {
	symbol, ok := body.Get(tag.Symbol)
	if !ok {
		return nil, topOfBook{}, errors.New("quote lacks Symbol(55)")
	}
	var b topOfBook
	for e := range body.Entries(tag.NoMDEntries) {
		typ, s, err := readSide(e)
		if err != nil {
			return symbol, b, err
		}
		b.apply(typ, s)
	}
	return symbol, b, nil
}

// bookUpdate is one entry of a MarketDataIncrementalRefresh; symbol aliases the message.
type bookUpdate struct {
	symbol []byte
	action enum.MDUpdateAction
	typ    enum.MDEntryType
	side   quoteSide
}

// incrementalUpdates reads a MarketDataIncrementalRefresh (35=X): each entry names its Symbol(55),
// MDUpdateAction(279) and side.
func incrementalUpdates(body fixspec.Fields) ([]bookUpdate, error) {
	var out []bookUpdate
	for e := range body.Entries(tag.NoMDEntries) {
		symbol, ok := e.Get(tag.Symbol)
		if !ok {
			return nil, errors.New("update lacks Symbol(55)")
		}
		action, ok := e.Get(tag.MDUpdateAction)
		if !ok {
			return nil, errors.New("update lacks MDUpdateAction(279)")
		}
		u := bookUpdate{symbol: symbol, action: enum.MDUpdateAction(action)}
		if u.action == enum.MDUpdateAction_DELETE {
			typ, _ := e.Get(tag.MDEntryType)
			u.typ = enum.MDEntryType(typ)
			out = append(out, u)
			continue
		}
		var err error
		if u.typ, u.side, err = readSide(e); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// rate turns a complete top of book into a rate. The quote's identity (provider time and quote id)
// is the newer of the two sides' by the readers' order (time, then quote id): an incremental update of
// one side in the same millisecond as the other's then still makes a newer rate, where taking the
// bid's id on a tie made it a duplicate that every reader dropped. Epoch, sequence and session are the
// caller's.
func (b topOfBook) rate(pair fx.Pair) (eventing.RateV1, error) {
	if !b.bid.set || !b.offer.set {
		return eventing.RateV1{}, errIncompleteQuote
	}
	latest := b.bid
	if b.offer.at.After(b.bid.at) || (b.offer.at.Equal(b.bid.at) && eventing.CompareQuoteIDs(b.offer.quoteID, b.bid.quoteID) > 0) {
		latest = b.offer
	}
	return eventing.RateV1{
		Pair: pair, Bid: b.bid.px, Ask: b.offer.px, BidSize: b.bid.size, AskSize: b.offer.size,
		ProviderTime: latest.at, QuoteID: latest.quoteID,
	}, nil
}
