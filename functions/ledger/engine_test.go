package ledger

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

func dp(s string) *decimal.Decimal { v := d(s); return &v }

var testNow = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// testBook is the deterministic in-memory price source of the unit tests.
func testBook() *QuoteBook {
	b := NewQuoteBook()
	for _, q := range [][3]string{
		{"USD_JPY", "150.000", "150.010"}, {"EUR_USD", "1.10000", "1.10010"}, {"EUR_JPY", "165.000", "165.020"},
		{"GBP_USD", "1.25000", "1.25010"}, {"EUR_GBP", "0.88000", "0.88010"}, {"GBP_JPY", "187.500", "187.520"},
	} {
		b.Set(Quote{Pair: fx.Pair(q[0]), Bid: d(q[1]), Ask: d(q[2]), Time: testNow, Tradeable: true, QuoteID: "q1"})
	}
	return b
}

func testLedger(t *testing.T, prices PriceSource) *Ledger {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &Ledger{cfg: DefaultConfig(), prices: prices, m: m}
}

func placeCmd(id, pair, side, units, typ string) *eventing.OrderCommandV1 {
	o := &eventing.OrderSpec{Pair: fx.Pair(pair), Side: side, Units: d(units), Type: typ, TimeInForce: eventing.TimeInForceFOK}
	if typ != eventing.OrderTypeMarket {
		o.TimeInForce = eventing.TimeInForceGTC
	}
	return &eventing.OrderCommandV1{CommandID: "place:" + id, Kind: eventing.CommandPlace, AccountID: "A", OrderID: id, Order: o, RequestedAt: testNow}
}

func newAccount(ccy fx.Currency, balance string) *accountState {
	return &accountState{ID: "A", Currency: ccy, Balance: d(balance), TxSeq: 1, Positions: map[fx.Pair]position{}}
}

func TestNetting(t *testing.T) {
	cases := []struct {
		name                 string
		u0, a0, units, price string
		wantUnits, wantAvg   string
		wantRealized         string
	}{
		{"open long", "0", "0", "1000", "150.010", "1000", "150.01", "0"},
		{"add long averages", "1000", "150.000", "3000", "150.100", "4000", "150.075", "0"},
		{"reduce long realizes", "4000", "150.075", "-1000", "150.175", "3000", "150.075", "100"},
		{"close long", "3000", "150.075", "-3000", "150.000", "0", "0", "-225"},
		{"flip long to short", "1000", "150.000", "-3000", "151.000", "-2000", "151", "1000"},
		{"reduce short realizes", "-2000", "151.000", "500", "150.000", "-1500", "151", "500"},
	}
	for _, c := range cases {
		res := net(position{Pair: "USD_JPY", Units: d(c.u0), AveragePrice: d(c.a0)}, d(c.units), d(c.price), 3)
		if !res.After.Units.Equal(d(c.wantUnits)) || !res.After.AveragePrice.Equal(d(c.wantAvg)) || !res.Realized.Equal(d(c.wantRealized)) {
			t.Errorf("%s: got units %s avg %s realized %s, want %s %s %s", c.name, res.After.Units, res.After.AveragePrice,
				res.Realized, c.wantUnits, c.wantAvg, c.wantRealized)
		}
	}
}

func TestConversionDirectInverseAndThroughUSD(t *testing.T) {
	p := pricer{prices: testBook()}
	cases := []struct {
		from, to fx.Currency
		want     string
	}{
		{"JPY", "JPY", "1"},
		{"USD", "JPY", "150.005"},
		{"JPY", "USD", "0.006666444452"},
		{"GBP", "JPY", "187.51"},
		// GBP -> USD directly (GBP_USD mid 1.25005).
		{"GBP", "USD", "1.25005"},
	}
	for _, c := range cases {
		got, err := p.conversion(c.from, c.to)
		if err != nil || !got.Equal(d(c.want)) {
			t.Errorf("%s->%s = %s, %v; want %s", c.from, c.to, got, err, c.want)
		}
	}
	if _, err := p.conversion("CHF", "JPY"); err == nil {
		t.Error("CHF->JPY without quotes converted")
	}
}

func TestEntryMustBalancePanics(t *testing.T) {
	var e entry
	e.transfer(HouseDealer, "A", "JPY", d("100"))
	e.mustBalance("balanced")
	e = append(e, posting{Book: "A", Currency: "JPY", Amount: d("1")})
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "unbalanced") {
			t.Fatalf("recover = %v, want an unbalanced-entry panic", r)
		}
	}()
	e.mustBalance("unbalanced")
}

func TestMarketOrderFillsAtAskAndBid(t *testing.T) {
	l := testLedger(t, testBook())
	acct := newAccount("JPY", "1000000")
	eff := newEngine(l, acct, placeCmd("o1", "USD_JPY", "buy", "10000", "market"), testNow).apply(target{})
	if eff.Result.Status != eventing.ResultFilled || !eff.Result.Price.Equal(d("150.010")) {
		t.Fatalf("buy result = %+v", eff.Result)
	}
	eff = newEngine(l, acct, placeCmd("o2", "USD_JPY", "sell", "4000", "market"), testNow).apply(target{})
	// Sold 4,000 at the bid 150.000 against an average of 150.010: realized -40 JPY.
	if eff.Result.Status != eventing.ResultFilled || !eff.Result.Price.Equal(d("150.000")) || !eff.Executions[0].RealizedPL.Equal(d("-40")) {
		t.Fatalf("sell result = %+v %+v", eff.Result, eff.Executions)
	}
	if !acct.Balance.Equal(d("999960")) || !acct.Positions["USD_JPY"].Units.Equal(d("6000")) {
		t.Fatalf("account after = %s %+v", acct.Balance, acct.Positions)
	}
	tx := eff.Transactions[0]
	if tx.Type != TxOrderFill || !tx.Amount.Equal(d("-40")) || len(tx.Entry.imbalance()) != 0 || acct.ExecSeq != 2 || tx.ID != 3 {
		t.Fatalf("transaction = %+v (exec seq %d)", tx, acct.ExecSeq)
	}
}

func TestRealizedPLConvertsThroughHouseFX(t *testing.T) {
	l := testLedger(t, testBook())
	acct := newAccount("JPY", "1000000")
	acct.Positions["EUR_USD"] = position{Pair: "EUR_USD", Units: d("10000"), AveragePrice: d("1.09000")}
	eff := newEngine(l, acct, placeCmd("o1", "EUR_USD", "sell", "10000", "market"), testNow).apply(target{})
	// 10,000 x (1.10000 - 1.09000) = 100 USD, at USD_JPY mid 150.005 = 15,000.5 -> 15,001 JPY (rounded).
	x := eff.Executions[0]
	if !x.RealizedPL.Equal(d("15001")) || x.Currency != "JPY" {
		t.Fatalf("realized = %s %s", x.RealizedPL, x.Currency)
	}
	e := eff.Transactions[0].Entry
	if !e.sumFor(HouseDealer, "USD").Equal(d("-100")) || !e.sumFor(HouseFX, "USD").Equal(d("100")) ||
		!e.sumFor(HouseFX, "JPY").Equal(d("-15001")) || !e.sumFor("A", "JPY").Equal(d("15001")) {
		t.Fatalf("postings = %+v", e)
	}
	if _, open := acct.Positions["EUR_USD"]; open || !eff.Positions["EUR_USD"].Units.IsZero() {
		t.Fatalf("position not closed: %+v", acct.Positions)
	}
}

func TestMarketOrderRefusals(t *testing.T) {
	book := testBook()
	book.Set(Quote{Pair: "GBP_JPY", Bid: d("187.500"), Ask: d("187.520"), Time: testNow.Add(-time.Minute), Tradeable: true})
	book.Set(Quote{Pair: "EUR_JPY", Bid: d("165.000"), Ask: d("165.020"), Time: testNow, Tradeable: false})
	l := testLedger(t, book)
	bounded := placeCmd("o4", "USD_JPY", "buy", "1000", "market")
	bounded.Order.PriceBound = dp("150.005")
	late := placeCmd("o8", "USD_JPY", "buy", "1000", "market")
	late.RequestedAt = testNow.Add(-time.Minute)
	cases := []struct {
		cmd  *eventing.OrderCommandV1
		want string
	}{
		{placeCmd("o1", "GBP_JPY", "buy", "1000", "market"), ReasonStalePrice},
		{placeCmd("o2", "EUR_JPY", "buy", "1000", "market"), ReasonNotTradeable},
		{placeCmd("o3", "AUD_JPY", "buy", "1000", "market"), ReasonNoPrice},
		{bounded, ReasonPriceBound},
		// Accepted by trading over a minute ago (queued behind an outage, or replayed from the dead
		// letters): too late to fill at today's price.
		{late, ReasonExpired},
		// 1,000,000 JPY at leverage 25 carries at most about 166,000 USD_JPY.
		{placeCmd("o5", "USD_JPY", "buy", "170000", "market"), ReasonInsufficientMargin},
	}
	for _, c := range cases {
		acct := newAccount("JPY", "1000000")
		eff := newEngine(l, acct, c.cmd, testNow).apply(target{})
		if eff.Result.Status != eventing.ResultRejected || eff.Result.Reason != c.want || len(eff.Executions) != 0 ||
			eff.NewOrders[0].Status != StatusRejected || eff.Transactions[0].Type != TxOrderReject {
			t.Errorf("%s: result %+v, want rejected %s", c.cmd.OrderID, eff.Result, c.want)
		}
		if !acct.Balance.Equal(d("1000000")) || len(acct.Positions) != 0 {
			t.Errorf("%s: a refusal changed the account", c.cmd.OrderID)
		}
	}
	acct := newAccount("JPY", "1000000")
	if eff := newEngine(l, acct, placeCmd("o6", "USD_JPY", "buy", "160000", "market"), testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("order within margin: %+v", eff.Result)
	}
	// Accepted 20 s ago (a busy or restarting ledger): still in time.
	queued := placeCmd("o9", "USD_JPY", "buy", "1", "market")
	queued.RequestedAt = testNow.Add(-20 * time.Second)
	if eff := newEngine(l, acct, queued, testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("order accepted 20 s ago: %+v", eff.Result)
	}
	// Reducing a position is allowed however low the margin level.
	if eff := newEngine(l, acct, placeCmd("o7", "USD_JPY", "sell", "100000", "market"), testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("reducing order: %+v", eff.Result)
	}
}

func TestPendingOrdersTriggerAndExpire(t *testing.T) {
	book := testBook()
	l := testLedger(t, book)
	acct := newAccount("JPY", "1000000")
	limit := placeCmd("L1", "USD_JPY", "buy", "1000", "limit")
	limit.Order.Price = dp("149.500")
	eff := newEngine(l, acct, limit, testNow).apply(target{})
	if eff.Result.Status != eventing.ResultAccepted || eff.NewOrders[0].Status != StatusPending {
		t.Fatalf("limit placement = %+v", eff.Result)
	}
	o := eff.NewOrders[0]
	if crossed(o, Quote{Bid: d("149.500"), Ask: d("149.510")}) || !crossed(o, Quote{Bid: d("149.490"), Ask: d("149.500")}) {
		t.Fatal("limit buy must trigger at ask <= price only")
	}
	stop := &order{Type: "stop", Side: "sell", Price: dp("149.000")}
	if crossed(stop, Quote{Bid: d("149.001"), Ask: d("149.010")}) || !crossed(stop, Quote{Bid: d("149.000"), Ask: d("149.010")}) {
		t.Fatal("stop sell must trigger at bid <= price only")
	}
	// The market moved through the limit: the trigger fills at the better of market and limit.
	book.Set(Quote{Pair: "USD_JPY", Bid: d("149.300"), Ask: d("149.310"), Time: testNow, Tradeable: true})
	trig := &eventing.OrderCommandV1{CommandID: "trigger:L1", Kind: eventing.CommandTrigger, AccountID: "A", OrderID: "L1"}
	eff = newEngine(l, acct, trig, testNow).apply(target{Order: o})
	if eff.Result.Status != eventing.ResultFilled || !eff.Result.Price.Equal(d("149.310")) || eff.Executions[0].Reason != eventing.ExecutionReasonTrigger {
		t.Fatalf("trigger = %+v", eff.Result)
	}
	// The same trigger again finds the order filled and changes nothing.
	eff = newEngine(l, acct, trig, testNow).apply(target{Order: o})
	if eff.Result.Status != eventing.ResultRejected || eff.Result.Reason != ReasonOrderNotPending || len(eff.Transactions) != 0 {
		t.Fatalf("second trigger = %+v", eff)
	}
	gtd := placeCmd("G1", "USD_JPY", "sell", "1000", "limit")
	gtd.Order.Price, gtd.Order.TimeInForce = dp("151.000"), eventing.TimeInForceGTD
	till := testNow.Add(time.Hour)
	gtd.Order.GoodTill = &till
	eff = newEngine(l, acct, gtd, testNow).apply(target{})
	g := eff.NewOrders[0]
	exp := &eventing.OrderCommandV1{CommandID: "expire:G1", Kind: eventing.CommandCancel, AccountID: "A", OrderID: "G1"}
	eff = newEngine(l, acct, exp, till).apply(target{Order: g})
	if g.Status != StatusExpired || eff.Transactions[0].Type != TxOrderExpire || eff.Result.Status != eventing.ResultCancelled {
		t.Fatalf("expiry = %+v", eff)
	}
	// The expiry again (the watcher resends), now of an order no longer pending: rejected, and
	// nothing in the trader's transaction log; a trader's own cancel of it is recorded.
	eff = newEngine(l, acct, exp, till).apply(target{Order: g})
	if eff.Result.Status != eventing.ResultRejected || eff.Result.Reason != ReasonOrderNotPending || len(eff.Transactions) != 0 {
		t.Fatalf("expiry of an expired order = %+v", eff)
	}
	own := &eventing.OrderCommandV1{CommandID: "cancel:G1", Kind: eventing.CommandCancel, AccountID: "A", OrderID: "G1"}
	if eff = newEngine(l, acct, own, till).apply(target{Order: g}); len(eff.Transactions) != 1 || eff.Transactions[0].Type != TxCommandReject {
		t.Fatalf("trader's cancel of an expired order = %+v", eff)
	}
}

// TestTriggerWithStaleQuote: the market gapped through a stop and the ledger's own quote of the pair
// went stale before it applied the trigger. The stop fills at the market the trigger saw, not at its
// own price; a limit at that market or its price, whichever is better. A trigger that carries no
// quote (issued before triggers did), or one older than the ledger's stale quote, fills at the
// order's price, as the trigger saw it cross.
func TestTriggerWithStaleQuote(t *testing.T) {
	book := testBook()
	book.Set(Quote{Pair: "USD_JPY", Bid: d("149.300"), Ask: d("149.310"), Time: testNow.Add(-time.Minute), Tradeable: true})
	l := testLedger(t, book)
	seen := &eventing.TriggerQuote{Pair: "USD_JPY", Bid: d("148.500"), Ask: d("148.510"), Time: testNow.Add(-50 * time.Second)}
	cases := []struct {
		typ, side, price string
		quote            *eventing.TriggerQuote
		want             string
	}{
		{"stop", "sell", "149.000", seen, "148.500"},
		{"limit", "buy", "149.000", seen, "148.510"},
		{"limit", "sell", "148.000", seen, "148.500"},
		{"stop", "sell", "149.000", nil, "149.000"},
		// The trigger saw the ledger's own quote, since gone stale: it crossed, so it prices the fill.
		{"stop", "sell", "149.500", &eventing.TriggerQuote{Pair: "USD_JPY", Bid: d("149.300"), Ask: d("149.310"), Time: testNow.Add(-time.Minute)}, "149.300"},
		// The ledger's own stale quote is newer than the trigger's: the market moved on after the
		// trigger, so neither is taken; the order fills at its own price.
		{"stop", "sell", "149.000", &eventing.TriggerQuote{Pair: "USD_JPY", Bid: d("148.500"), Ask: d("148.510"), Time: testNow.Add(-2 * time.Minute)}, "149.000"},
		// A quote of another pair is not this order's market.
		{"stop", "sell", "149.000", &eventing.TriggerQuote{Pair: "EUR_JPY", Bid: d("160.000"), Ask: d("160.010"), Time: testNow}, "149.000"},
	}
	for i, c := range cases {
		acct := newAccount("JPY", "1000000")
		id := fmt.Sprintf("P%d", i)
		o := &order{ID: id, AccountID: "A", Pair: "USD_JPY", Side: c.side, Type: c.typ, Units: d("1000"), Price: dp(c.price),
			TimeInForce: eventing.TimeInForceGTC, Status: StatusPending}
		trig := &eventing.OrderCommandV1{CommandID: "trigger:" + id, Kind: eventing.CommandTrigger, AccountID: "A", OrderID: id,
			TriggerRateID: "q1", TriggerQuote: c.quote}
		eff := newEngine(l, acct, trig, testNow).apply(target{Order: o})
		if eff.Result.Status != eventing.ResultFilled || !eff.Executions[0].Price.Equal(d(c.want)) {
			t.Errorf("%s %s at %s with quote %v: %+v, want filled at %s", c.typ, c.side, c.price, c.quote, eff.Result, c.want)
		}
	}
}

// TestTriggerCommandCarriesItsQuote: the watcher's trigger names, and carries, the quote that crossed
// the order's price, which the ledger falls back on if its own goes stale before it applies it.
func TestTriggerCommandCarriesItsQuote(t *testing.T) {
	book := testBook()
	now := time.Now().UTC()
	book.Set(Quote{Pair: "USD_JPY", Bid: d("149.400"), Ask: d("149.410"), Time: now, Tradeable: true, QuoteID: "q7"})
	w := &watcher{l: testLedger(t, book)}
	o := &order{ID: "L1", AccountID: "A", Pair: "USD_JPY", Side: "buy", Type: "limit", Units: d("1000"), Price: dp("149.500"),
		TimeInForce: eventing.TimeInForceGTC, Status: StatusPending}
	cmd, kind, ok := w.orderCommand(pricer{prices: book}, o, now)
	if !ok || kind != "trigger" || cmd.CommandID != "trigger:L1" || cmd.TriggerRateID != "q7" {
		t.Fatalf("command %+v (%s, %v)", cmd, kind, ok)
	}
	want := eventing.TriggerQuote{Pair: "USD_JPY", Bid: d("149.400"), Ask: d("149.410"), Time: now}
	if q := cmd.TriggerQuote; q == nil || q.Pair != want.Pair || !q.Bid.Equal(want.Bid) || !q.Ask.Equal(want.Ask) || !q.Time.Equal(want.Time) {
		t.Fatalf("trigger quote %+v, want %+v", cmd.TriggerQuote, want)
	}
	if err := cmd.Validate(); err != nil {
		t.Fatalf("the watcher's trigger does not validate: %v", err)
	}
}

// TestTriggerQuoteAlsoJudgesMargin: a stop filled at the trigger's quote (the ledger's own gone stale)
// has its margin judged at that quote too. Bought at 151 and valued at the stale 148 it would look
// 450,000 JPY under water and be refused; at 151 it fits.
func TestTriggerQuoteAlsoJudgesMargin(t *testing.T) {
	book := testBook()
	book.Set(Quote{Pair: "USD_JPY", Bid: d("148.000"), Ask: d("148.010"), Time: testNow.Add(-time.Minute), Tradeable: true})
	l := testLedger(t, book)
	acct := newAccount("JPY", "1000000")
	o := &order{ID: "S1", AccountID: "A", Pair: "USD_JPY", Side: "buy", Type: "stop", Units: d("150000"), Price: dp("150.000"),
		TimeInForce: eventing.TimeInForceGTC, Status: StatusPending}
	trig := &eventing.OrderCommandV1{CommandID: "trigger:S1", Kind: eventing.CommandTrigger, AccountID: "A", OrderID: "S1",
		TriggerRateID: "q9", TriggerQuote: &eventing.TriggerQuote{Pair: "USD_JPY", Bid: d("150.990"), Ask: d("151.000"), Time: testNow.Add(-time.Second)}}
	eff := newEngine(l, acct, trig, testNow).apply(target{Order: o})
	if eff.Result.Status != eventing.ResultFilled || !eff.Executions[0].Price.Equal(d("151.000")) {
		t.Fatalf("stop = %+v, want filled at 151.000", eff.Result)
	}
}

func TestCloseOutBelowHalfMargin(t *testing.T) {
	book := testBook()
	l := testLedger(t, book)
	acct := newAccount("JPY", "100000")
	eff := newEngine(l, acct, placeCmd("o1", "USD_JPY", "buy", "16000", "market"), testNow).apply(target{})
	if eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("open = %+v", eff.Result)
	}
	co := &eventing.OrderCommandV1{CommandID: "closeout:A:2:1", Kind: eventing.CommandCloseOut, AccountID: "A"}
	if eff := newEngine(l, acct, co, testNow).apply(target{}); eff.Result.Reason != ReasonMarginSufficient || len(eff.Executions) != 0 {
		t.Fatalf("close-out above 50%% = %+v", eff.Result)
	}
	// USD_JPY falls 4 yen: NAV = 100,000 - 16,000 x 4.01 < 50% of the margin (16,000 x 146 / 25).
	book.Set(Quote{Pair: "USD_JPY", Bid: d("146.000"), Ask: d("146.010"), Time: testNow, Tradeable: true})
	eff = newEngine(l, acct, co, testNow).apply(target{})
	if eff.Result.Status != eventing.ResultFilled || eff.Result.Reason != ReasonMarginCloseout || len(eff.Executions) != 1 {
		t.Fatalf("close-out = %+v", eff.Result)
	}
	x := eff.Executions[0]
	if x.Reason != eventing.ExecutionReasonCloseout || x.Side != "sell" || !x.Price.Equal(d("146.000")) || !x.RealizedPL.Equal(d("-64160")) {
		t.Fatalf("close-out execution = %+v", x)
	}
	if len(acct.Positions) != 0 || !acct.Balance.Equal(d("35840")) || eff.Transactions[0].Type != TxCloseoutFill {
		t.Fatalf("after close-out: %s %+v", acct.Balance, acct.Positions)
	}
}

// TestCloseOutSkipsStalePairs: a close-out closes the positions it has a fresh, tradeable price for
// and leaves a pair whose quote is two hours old for a later close-out, rather than closing it at a
// price long gone; with no such price at all it changes nothing.
func TestCloseOutSkipsStalePairs(t *testing.T) {
	book := testBook()
	l := testLedger(t, book)
	acct := newAccount("JPY", "100000")
	for _, c := range []*eventing.OrderCommandV1{placeCmd("o1", "USD_JPY", "buy", "15000", "market"), placeCmd("o2", "EUR_USD", "buy", "100", "market")} {
		if eff := newEngine(l, acct, c, testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
			t.Fatalf("open %s = %+v", c.OrderID, eff.Result)
		}
	}
	book.Set(Quote{Pair: "EUR_USD", Bid: d("1.10000"), Ask: d("1.10010"), Time: testNow.Add(-2 * time.Hour), Tradeable: false})
	book.Set(Quote{Pair: "USD_JPY", Bid: d("146.000"), Ask: d("146.010"), Time: testNow, Tradeable: true})
	co := &eventing.OrderCommandV1{CommandID: "closeout:A:3:1", Kind: eventing.CommandCloseOut, AccountID: "A"}
	eff := newEngine(l, acct, co, testNow).apply(target{})
	if eff.Result.Status != eventing.ResultFilled || len(eff.Executions) != 1 || eff.Executions[0].Pair != "USD_JPY" {
		t.Fatalf("close-out = %+v, executions %+v", eff.Result, eff.Executions)
	}
	if _, open := acct.Positions["EUR_USD"]; !open || len(acct.Positions) != 1 {
		t.Fatalf("positions after the close-out: %+v", acct.Positions)
	}
	// An account whose only position is on the stale pair, below the line at its last quote: nothing
	// to close at a real price.
	book.Set(Quote{Pair: "EUR_USD", Bid: d("1.10000"), Ask: d("1.10010"), Time: testNow, Tradeable: true})
	only := newAccount("JPY", "100000")
	if eff := newEngine(l, only, placeCmd("o3", "EUR_USD", "buy", "10000", "market"), testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("open EUR_USD = %+v", eff.Result)
	}
	book.Set(Quote{Pair: "EUR_USD", Bid: d("1.05000"), Ask: d("1.05010"), Time: testNow.Add(-2 * time.Hour), Tradeable: false})
	co2 := &eventing.OrderCommandV1{CommandID: "closeout:A:4:1", Kind: eventing.CommandCloseOut, AccountID: "A"}
	eff = newEngine(l, only, co2, testNow).apply(target{})
	if eff.Result.Status != eventing.ResultRejected || eff.Result.Reason != ReasonNotTradeable || len(eff.Executions) != 0 || len(only.Positions) != 1 {
		t.Fatalf("close-out with only a stale pair = %+v, positions %+v", eff.Result, only.Positions)
	}
}

// jumpingPrices answers USD_JPY at 150 the first time and at 75 after: a quote that changes while a
// command is being decided.
type jumpingPrices struct {
	*QuoteBook
	asked int
}

func (j *jumpingPrices) Quote(p fx.Pair) (Quote, bool) {
	q, ok := j.QuoteBook.Quote(p)
	if p == "USD_JPY" {
		if j.asked++; j.asked > 1 {
			q.Bid, q.Ask = d("75.000"), d("75.010")
		}
	}
	return q, ok
}

// TestCommandSeesOneSetOfQuotes: the fill price and the margin check of one order come from the same
// quote, however the live quote moves meanwhile. At 150 the order needs 960,000 JPY of margin and
// fits; bought at 150 and judged at 75 it would be 12 million JPY under water and refused.
func TestCommandSeesOneSetOfQuotes(t *testing.T) {
	l := testLedger(t, &jumpingPrices{QuoteBook: testBook()})
	acct := newAccount("JPY", "1000000")
	eff := newEngine(l, acct, placeCmd("o1", "USD_JPY", "buy", "160000", "market"), testNow).apply(target{})
	if eff.Result.Status != eventing.ResultFilled || !eff.Executions[0].Price.Equal(d("150.010")) {
		t.Fatalf("order = %+v, want filled at 150.010 and judged at that price", eff.Result)
	}
}

// TestReducingOrderNeedsNoOtherQuote: an order that shrinks a position is filled even though another
// pair of the account has no quote (its margin can only fall); one that grows a position still needs
// the whole account valued.
func TestReducingOrderNeedsNoOtherQuote(t *testing.T) {
	l := testLedger(t, testBook()) // no CHF_JPY quote
	acct := newAccount("JPY", "1000000")
	if eff := newEngine(l, acct, placeCmd("o1", "USD_JPY", "buy", "2000", "market"), testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("open = %+v", eff.Result)
	}
	acct.Positions["CHF_JPY"] = position{Pair: "CHF_JPY", Units: d("1000"), AveragePrice: d("170.000")}
	if eff := newEngine(l, acct, placeCmd("o2", "USD_JPY", "sell", "1500", "market"), testNow).apply(target{}); eff.Result.Status != eventing.ResultFilled {
		t.Fatalf("reducing order = %+v", eff.Result)
	}
	if eff := newEngine(l, acct, placeCmd("o3", "USD_JPY", "buy", "1000", "market"), testNow).apply(target{}); eff.Result.Status != eventing.ResultRejected {
		t.Fatalf("growing order without every quote = %+v", eff.Result)
	}
}

func TestCancelAndDuplicates(t *testing.T) {
	l := testLedger(t, testBook())
	acct := newAccount("JPY", "1000000")
	cancel := &eventing.OrderCommandV1{CommandID: "cancel:X", Kind: eventing.CommandCancel, AccountID: "A", OrderID: "X"}
	if eff := newEngine(l, acct, cancel, testNow).apply(target{}); eff.Result.Reason != ReasonOrderNotFound || eff.Transactions[0].Type != TxCommandReject {
		t.Fatalf("cancel unknown = %+v", eff.Result)
	}
	dup := placeCmd("o1", "USD_JPY", "buy", "1", "market")
	dup.Order.ClientOrderID = "c1"
	eff := newEngine(l, acct, dup, testNow).apply(target{ClientOrderIDTaken: true})
	if eff.Result.Reason != ReasonDuplicateClientID || eff.NewOrders[0].Status != StatusRejected {
		t.Fatalf("duplicate client id = %+v", eff.Result)
	}
	eff = newEngine(l, acct, placeCmd("o1", "USD_JPY", "buy", "1", "market"), testNow).apply(target{Order: &order{ID: "o1"}})
	if eff.Result.Reason != ReasonDuplicateOrderID || len(eff.NewOrders) != 0 {
		t.Fatalf("duplicate order id = %+v", eff.Result)
	}
}

func TestSentKeyDropsCloseoutTimeBucket(t *testing.T) {
	if got := sentKey("closeout:A:7:1700000000"); got != "closeout:A:7" {
		t.Errorf("sentKey = %q", got)
	}
	if got := sentKey("trigger:o1"); got != "trigger:o1" {
		t.Errorf("sentKey = %q", got)
	}
}
