package feeder

import (
	"errors"
	"fmt"
	"time"

	"github.com/quickfixgo/enum"
	"github.com/quickfixgo/fix44/marketdataincrementalrefresh"
	"github.com/quickfixgo/fix44/marketdatasnapshotfullrefresh"
	"github.com/quickfixgo/quickfix"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
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

// mdEntry is what the NoMDEntries groups of 35=W and 35=X both offer to read a side.
type mdEntry interface {
	GetMDEntryType() (enum.MDEntryType, quickfix.MessageRejectError)
	GetMDEntryPx() (decimal.Decimal, quickfix.MessageRejectError)
	GetMDEntrySize() (decimal.Decimal, quickfix.MessageRejectError)
	GetMDEntryDate() (string, quickfix.MessageRejectError)
	GetMDEntryTime() (string, quickfix.MessageRejectError)
	GetQuoteEntryID() (string, quickfix.MessageRejectError)
}

func readSide(e mdEntry) (enum.MDEntryType, quoteSide, error) {
	typ, rerr := e.GetMDEntryType()
	if rerr != nil {
		return "", quoteSide{}, fmt.Errorf("MDEntryType(269): %w", rerr)
	}
	s := quoteSide{set: true}
	if s.px, rerr = e.GetMDEntryPx(); rerr != nil {
		return typ, s, fmt.Errorf("MDEntryPx(270): %w", rerr)
	}
	s.size, _ = e.GetMDEntrySize()
	date, derr := e.GetMDEntryDate()
	clock, terr := e.GetMDEntryTime()
	if derr != nil || terr != nil {
		return typ, s, errors.New("quote lacks MDEntryDate(272) or MDEntryTime(273)")
	}
	at, err := time.Parse(mdEntryTimestampLayout, date+" "+clock)
	if err != nil {
		return typ, s, fmt.Errorf("MDEntryDate(272)/MDEntryTime(273) %q %q: %w", date, clock, err)
	}
	s.at = at
	if s.quoteID, rerr = e.GetQuoteEntryID(); rerr != nil {
		return typ, s, fmt.Errorf("QuoteEntryID(299): %w", rerr)
	}
	return typ, s, nil
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
func snapshotBook(msg marketdatasnapshotfullrefresh.MarketDataSnapshotFullRefresh) (string, topOfBook, error) {
	symbol, rerr := msg.GetSymbol()
	if rerr != nil {
		return "", topOfBook{}, fmt.Errorf("Symbol(55): %w", rerr)
	}
	entries, rerr := msg.GetNoMDEntries()
	if rerr != nil {
		return symbol, topOfBook{}, fmt.Errorf("NoMDEntries(268): %w", rerr)
	}
	var b topOfBook
	for i := range entries.Len() {
		typ, s, err := readSide(entries.Get(i))
		if err != nil {
			return symbol, b, err
		}
		b.apply(typ, s)
	}
	return symbol, b, nil
}

// bookUpdate is one entry of a MarketDataIncrementalRefresh.
type bookUpdate struct {
	symbol string
	action enum.MDUpdateAction
	typ    enum.MDEntryType
	side   quoteSide
}

// incrementalUpdates reads a MarketDataIncrementalRefresh (35=X): each entry names its Symbol(55),
// MDUpdateAction(279) and side.
func incrementalUpdates(msg marketdataincrementalrefresh.MarketDataIncrementalRefresh) ([]bookUpdate, error) {
	entries, rerr := msg.GetNoMDEntries()
	if rerr != nil {
		return nil, fmt.Errorf("NoMDEntries(268): %w", rerr)
	}
	out := make([]bookUpdate, 0, entries.Len())
	for i := range entries.Len() {
		e := entries.Get(i)
		u := bookUpdate{}
		var rerr quickfix.MessageRejectError
		if u.symbol, rerr = e.GetSymbol(); rerr != nil {
			return nil, fmt.Errorf("Symbol(55): %w", rerr)
		}
		if u.action, rerr = e.GetMDUpdateAction(); rerr != nil {
			return nil, fmt.Errorf("MDUpdateAction(279): %w", rerr)
		}
		if u.action == enum.MDUpdateAction_DELETE {
			u.typ, _ = e.GetMDEntryType()
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
// is that of the side updated last; epoch, sequence and session are the caller's.
func (b topOfBook) rate(pair fx.Pair) (eventing.RateV1, error) {
	if !b.bid.set || !b.offer.set {
		return eventing.RateV1{}, errIncompleteQuote
	}
	latest := b.bid
	if b.offer.at.After(b.bid.at) {
		latest = b.offer
	}
	return eventing.RateV1{
		Pair: pair, Bid: b.bid.px, Ask: b.offer.px, BidSize: b.bid.size, AskSize: b.offer.size,
		ProviderTime: latest.at, QuoteID: latest.quoteID,
	}, nil
}
