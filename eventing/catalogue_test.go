package eventing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func rate() RateV1 {
	return RateV1{Pair: "USD_JPY", Bid: decimal.RequireFromString("151.420"), Ask: decimal.RequireFromString("151.425"),
		BidSize: decimal.NewFromInt(1_000_000), AskSize: decimal.NewFromInt(1_000_000),
		ProviderTime: time.Date(2026, 11, 22, 4, 0, 0, 50_000_000, time.UTC), QuoteID: "17", Epoch: 3, Seq: 9}
}

func TestRateEventRoundTripAndDeterministicID(t *testing.T) {
	r := rate()
	e, err := NewEvent(TypeRate, r.EventID(), &r)
	if err != nil {
		t.Fatal(err)
	}
	if e.Source() != SourceFeeder || PartitionKey(e) != "USD_JPY" || e.DataContentType() != ContentTypeJSON {
		t.Errorf("event attributes: %s", e)
	}
	if string(e.Data()) == "" || !strings.Contains(string(e.Data()), `"bid":"151.42"`) {
		t.Errorf("prices must be decimal strings: %s", e.Data())
	}
	back, err := Decode[RateV1](e, TypeRate)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Bid.Equal(r.Bid) || !back.Ask.Equal(r.Ask) || back.QuoteID != "17" || back.Epoch != 3 {
		t.Errorf("decoded %+v", back)
	}
	r2 := rate()
	r2.Epoch, r2.Seq = 4, 1 // another feeder publishing the same provider quote
	if r2.EventID() != r.EventID() {
		t.Errorf("same provider quote, different ids: %s vs %s", r.EventID(), r2.EventID())
	}
	if _, err := Decode[OrderResultV1](e, TypeOrderResult); !errors.Is(err, ErrUnknownType) {
		t.Errorf("decode as wrong type: %v", err)
	}
}

func TestRateValidation(t *testing.T) {
	mutate := map[string]func(*RateV1){
		"crossed":        func(r *RateV1) { r.Bid, r.Ask = r.Ask, r.Bid },
		"zero bid":       func(r *RateV1) { r.Bid = decimal.Zero },
		"too precise":    func(r *RateV1) { r.Ask = decimal.RequireFromString("151.4251") },
		"unknown pair":   func(r *RateV1) { r.Pair = "USD_XXX" },
		"no quote id":    func(r *RateV1) { r.QuoteID = "" },
		"no epoch":       func(r *RateV1) { r.Epoch = 0 },
		"negative size":  func(r *RateV1) { r.BidSize = decimal.NewFromInt(-1) },
		"no provider ts": func(r *RateV1) { r.ProviderTime = time.Time{} },
		"NUL in id":      func(r *RateV1) { r.QuoteID = "17\x00" },
		"long id":        func(r *RateV1) { r.QuoteID = strings.Repeat("7", labelCharsMax+1) },
		"bad session":    func(r *RateV1) { r.Session = "FIX\n4.4" },
		"huge seq num":   func(r *RateV1) { r.MsgSeqNum = math.MaxInt32 + 1 },
		"huge size":      func(r *RateV1) { r.AskSize = decimal.RequireFromString("1e2000000000") },
	}
	if err := func() error { r := rate(); r.QuoteID = strings.Repeat("ü", labelCharsMax); return r.Validate() }(); err != nil {
		t.Errorf("a quote id of %d characters: %v", labelCharsMax, err)
	}
	for name, m := range mutate {
		r := rate()
		m(&r)
		if err := r.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
		if _, err := NewEvent(TypeRate, r.EventID(), &r); err == nil {
			t.Errorf("%s: NewEvent accepted an invalid rate", name)
		}
	}
}

// Every triple of ids, in every format a provider might mix, is ordered consistently.
func TestCompareQuoteIDsIsATotalOrder(t *testing.T) {
	ids := []string{"2", "10", "010", "1a", "b", "18446744073709551616", "0", ""}
	for _, a := range ids {
		if CompareQuoteIDs(a, a) != 0 {
			t.Errorf("%q is not equal to itself", a)
		}
		for _, b := range ids {
			if CompareQuoteIDs(a, b) != -CompareQuoteIDs(b, a) {
				t.Errorf("%q, %q: not antisymmetric", a, b)
			}
			if a != b && CompareQuoteIDs(a, b) == 0 {
				t.Errorf("%q and %q taken for one quote", a, b)
			}
			for _, c := range ids {
				if CompareQuoteIDs(a, b) < 0 && CompareQuoteIDs(b, c) < 0 && CompareQuoteIDs(a, c) >= 0 {
					t.Errorf("%q < %q < %q but not %q < %q", a, b, c, a, c)
				}
			}
		}
	}
	if CompareQuoteIDs("9", "10") >= 0 || CompareQuoteIDs("1a", "2") <= 0 {
		t.Error("numbers by value, before other ids")
	}
}

func TestNewerThan(t *testing.T) {
	a, b := rate(), rate()
	b.QuoteID = "18"
	if !b.NewerThan(&a) || a.NewerThan(&b) || a.NewerThan(&a) {
		t.Error("quote id order")
	}
	b.QuoteID = "9" // numeric, not lexicographic: 9 < 17
	if b.NewerThan(&a) {
		t.Error("quote ids must compare numerically")
	}
	b.ProviderTime = a.ProviderTime.Add(time.Millisecond)
	if !b.NewerThan(&a) {
		t.Error("later provider time must win over quote id")
	}
}

func TestOrderCommandValidation(t *testing.T) {
	price := decimal.RequireFromString("150.000")
	good := OrderCommandV1{CommandID: "c1", Kind: CommandPlace, AccountID: "a1", OrderID: "o1",
		Order: &OrderSpec{Pair: "USD_JPY", Side: SideBuy, Units: decimal.NewFromInt(1000), Type: OrderTypeLimit,
			Price: &price, TimeInForce: TimeInForceGTC}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*OrderCommandV1){
		"no account":       func(c *OrderCommandV1) { c.AccountID = "" },
		"fractional units": func(c *OrderCommandV1) { c.Order.Units = decimal.RequireFromString("0.5") },
		"side":             func(c *OrderCommandV1) { c.Order.Side = "hold" },
		"limit no price":   func(c *OrderCommandV1) { c.Order.Price = nil },
		"market with GTC":  func(c *OrderCommandV1) { c.Order.Type, c.Order.Price = OrderTypeMarket, nil },
		"GTD no goodTill":  func(c *OrderCommandV1) { c.Order.TimeInForce = TimeInForceGTD },
		"kind":             func(c *OrderCommandV1) { c.Kind = "explode" },
	}
	for name, m := range bad {
		c := good
		o := *good.Order
		c.Order = &o
		m(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
}

// TestTriggerQuoteValidation: a trigger may carry the quote it saw, which must be a real quote of a
// known pair at its precision; no other kind carries one.
func TestTriggerQuoteValidation(t *testing.T) {
	at := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	quote := func() *TriggerQuote {
		return &TriggerQuote{Pair: "USD_JPY", Bid: decimal.RequireFromString("150.010"), Ask: decimal.RequireFromString("150.020"), Time: at}
	}
	good := OrderCommandV1{CommandID: "trigger:o1", Kind: CommandTrigger, AccountID: "a1", OrderID: "o1", TriggerQuote: quote()}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*OrderCommandV1){
		"unknown pair":   func(c *OrderCommandV1) { c.TriggerQuote.Pair = "XXX_YYY" },
		"bid precision":  func(c *OrderCommandV1) { c.TriggerQuote.Bid = decimal.RequireFromString("150.0101") },
		"ask negative":   func(c *OrderCommandV1) { c.TriggerQuote.Ask = decimal.RequireFromString("-150.020") },
		"crossed":        func(c *OrderCommandV1) { c.TriggerQuote.Ask = decimal.RequireFromString("150.000") },
		"no time":        func(c *OrderCommandV1) { c.TriggerQuote.Time = time.Time{} },
		"on a cancel":    func(c *OrderCommandV1) { c.Kind = CommandCancel },
		"huge magnitude": func(c *OrderCommandV1) { c.TriggerQuote.Ask = decimal.New(1, 400) },
	}
	for name, m := range bad {
		c := good
		c.TriggerQuote = quote()
		m(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
	}
}

func TestCatalogueIsComplete(t *testing.T) {
	topics := map[string]bool{}
	for _, tp := range Topics() {
		if tp.Partitions <= 0 || topics[tp.Name] {
			t.Errorf("topic %+v duplicated or without partitions", tp)
		}
		topics[tp.Name] = true
	}
	for _, s := range Specs() {
		if !topics[s.Topic] || s.Source == "" || s.DataSchema == "" || s.New == nil {
			t.Errorf("spec %s incomplete or on an undeclared topic", s.Type)
		}
	}
	if _, err := Lookup("kawase.nope.v1"); !errors.Is(err, ErrUnknownType) {
		t.Errorf("Lookup unknown = %v", err)
	}
}

// TestEventFromDataMatchesNewEvent: an event rebuilt from stored JSON (the ledger's outbox) is the
// event NewEvent made of the payload, attribute for attribute and byte for byte.
func TestEventFromDataMatchesNewEvent(t *testing.T) {
	for typ, payloads := range samplePayloads() {
		for i, p := range payloads {
			want, err := NewEvent(typ, fmt.Sprintf("id-%d", i), p)
			if err != nil {
				t.Fatal(err)
			}
			got, err := EventFromData(typ, want.ID(), p.PartitionKey(), want.Data(), want.Time())
			if err != nil {
				t.Fatal(err)
			}
			wb, _ := json.Marshal(want)
			gb, _ := json.Marshal(got)
			if !bytes.Equal(wb, gb) {
				t.Errorf("%s sample %d:\n got %s\nwant %s", typ, i, gb, wb)
			}
		}
	}
	if _, err := EventFromData(TypeOrderResult, "", "acc", []byte(`{}`), time.Now()); err == nil {
		t.Error("EventFromData accepted an empty id")
	}
	if _, err := EventFromData("kawase.nothing.v1", "x", "acc", []byte(`{}`), time.Now()); err == nil {
		t.Error("EventFromData accepted an unknown type")
	}
}
