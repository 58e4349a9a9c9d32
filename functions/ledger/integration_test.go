package ledger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/ledger"
	"github.com/kawase-fx/kawase/functions/ledger/ledgertest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const testTimeout = 120 * time.Second

func d(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// env is a ledger on a fresh database and a fresh embedded broker, with its handler on real HTTP.
type env struct {
	url     string
	pool    *pgxpool.Pool
	brokers []string
	book    *ledger.QuoteBook
	cfg     ledger.Config
	l       *ledger.Ledger
	srv     *httptest.Server
	// reg holds the metrics of the last ledger newLedger built.
	reg *prometheus.Registry
}

func testConfig() ledger.Config {
	cfg := ledger.DefaultConfig()
	// Quotes are set once per test: they must not go stale while it runs.
	cfg.QuoteAgeMax = time.Hour
	cfg.SweepInterval = 200 * time.Millisecond
	cfg.WatchInterval = 20 * time.Millisecond
	cfg.BookRefresh = 50 * time.Millisecond
	// The whole book is read once, at start: every later read is of the accounts the change log names.
	cfg.BookReload = time.Hour
	cfg.TriggerResend = 300 * time.Millisecond
	return cfg
}

func newEnv(t *testing.T, cfg ledger.Config) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	e := &env{url: pgtest.URL(t), cfg: cfg, book: ledger.NewQuoteBook()}
	if err := ledger.Migrate(ctx, e.url); err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e.pool = pool
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e.brokers = []string{b.Addr()}
	if err := broker.EnsureTopics(ctx, e.brokers, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
	setQuotes(e.book)
	e.l = e.newLedger(t)
	e.srv = httptest.NewServer(e.l.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) newLedger(t *testing.T) *ledger.Ledger {
	t.Helper()
	e.reg = prometheus.NewRegistry()
	l, err := ledger.New(e.cfg, ledger.Deps{Pool: e.pool, Prices: e.book, Brokers: e.brokers, Log: zap.NewNop().Sugar(),
		Registry: e.reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func setQuotes(b *ledger.QuoteBook) {
	now := time.Now().UTC()
	for _, q := range [][3]string{
		{"USD_JPY", "150.000", "150.010"}, {"EUR_USD", "1.10000", "1.10010"}, {"EUR_JPY", "165.000", "165.020"},
		{"GBP_USD", "1.25000", "1.25010"}, {"EUR_GBP", "0.88000", "0.88010"}, {"GBP_JPY", "187.500", "187.520"},
	} {
		b.Set(ledger.Quote{Pair: fx.Pair(q[0]), Bid: d(q[1]), Ask: d(q[2]), Time: now, Tradeable: true, QuoteID: "1"})
	}
}

func setQuote(b *ledger.QuoteBook, pair, bid, ask string) {
	b.Set(ledger.Quote{Pair: fx.Pair(pair), Bid: d(bid), Ask: d(ask), Time: time.Now().UTC(), Tradeable: true, QuoteID: "2"})
}

func (e *env) open(t *testing.T, id string, ccy fx.Currency, deposit string) {
	t.Helper()
	if _, err := e.l.OpenAccount(context.Background(), id, ccy, d(deposit)); err != nil {
		t.Fatal(err)
	}
}

func market(acct, orderID, pair, side, units string) *eventing.OrderCommandV1 {
	return &eventing.OrderCommandV1{CommandID: "place:" + orderID, Kind: eventing.CommandPlace, AccountID: acct,
		OrderID: orderID, RequestedAt: time.Now().UTC(), Order: &eventing.OrderSpec{Pair: fx.Pair(pair), Side: side,
			Units: d(units), Type: eventing.OrderTypeMarket, TimeInForce: eventing.TimeInForceFOK}}
}

func pending(acct, orderID, pair, side, units, typ, price string) *eventing.OrderCommandV1 {
	p := d(price)
	return &eventing.OrderCommandV1{CommandID: "place:" + orderID, Kind: eventing.CommandPlace, AccountID: acct,
		OrderID: orderID, RequestedAt: time.Now().UTC(), Order: &eventing.OrderSpec{Pair: fx.Pair(pair), Side: side,
			Units: d(units), Type: typ, Price: &p, TimeInForce: eventing.TimeInForceGTC}}
}

func (e *env) apply(t *testing.T, cmd *eventing.OrderCommandV1) eventing.OrderResultV1 {
	t.Helper()
	res, err := e.l.Apply(context.Background(), cmd)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func checkBooks(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	violations, err := ledgertest.CheckBooks(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range violations {
		t.Error(v)
	}
}

func TestApplyIsIdempotentAndDoubleEntry(t *testing.T) {
	e := newEnv(t, testConfig())
	e.open(t, "A", "JPY", "1000000")
	e.open(t, "U", "USD", "10000.50")
	first := e.apply(t, market("A", "o1", "USD_JPY", "buy", "10000"))
	if first.Status != eventing.ResultFilled || !first.Price.Equal(d("150.010")) {
		t.Fatalf("first = %+v", first)
	}
	again := e.apply(t, market("A", "o1", "USD_JPY", "buy", "10000"))
	if again.ExecutionID != first.ExecutionID || !again.DecidedAt.Equal(first.DecidedAt) {
		t.Fatalf("redelivery answered %+v, want the first result %+v", again, first)
	}
	setQuote(e.book, "USD_JPY", "151.000", "151.010")
	if r := e.apply(t, market("A", "o2", "USD_JPY", "sell", "4000")); r.Status != eventing.ResultFilled {
		t.Fatalf("o2 = %+v", r)
	}
	e.apply(t, market("A", "o3", "EUR_USD", "buy", "5000"))
	setQuote(e.book, "EUR_USD", "1.09000", "1.09010")
	e.apply(t, market("A", "o4", "EUR_USD", "sell", "8000"))
	e.apply(t, market("U", "u1", "EUR_GBP", "sell", "3000"))
	setQuote(e.book, "EUR_GBP", "0.87000", "0.87010")
	e.apply(t, market("U", "u2", "EUR_GBP", "buy", "3000"))
	e.apply(t, pending("U", "u3", "GBP_JPY", "buy", "1000", "limit", "180.000"))
	e.apply(t, &eventing.OrderCommandV1{CommandID: "cancel:u3", Kind: eventing.CommandCancel, AccountID: "U", OrderID: "u3"})
	if r := e.apply(t, market("nobody", "n1", "USD_JPY", "buy", "1")); r.Reason != ledger.ReasonAccountNotFound {
		t.Fatalf("unknown account = %+v", r)
	}
	e.apply(t, pending("U", "u4", "GBP_JPY", "buy", "1000", "limit", "180.000"))
	if r := e.apply(t, &eventing.OrderCommandV1{CommandID: "cancel:A:u4", Kind: eventing.CommandCancel, AccountID: "A", OrderID: "u4"}); r.Reason != ledger.ReasonOrderNotFound {
		t.Fatalf("cancel of another account's order = %+v", r)
	}
	if r := e.apply(t, &eventing.OrderCommandV1{CommandID: "place:A:u4", Kind: eventing.CommandPlace, AccountID: "A", OrderID: "u4",
		Order: market("A", "u4", "USD_JPY", "buy", "1").Order}); r.Reason != ledger.ReasonDuplicateOrderID {
		t.Fatalf("placing another account's order id = %+v", r)
	}
	if r := e.apply(t, &eventing.OrderCommandV1{CommandID: "trigger:A:u4", Kind: eventing.CommandTrigger, AccountID: "A", OrderID: "u4"}); r.Reason != ledger.ReasonOrderNotFound {
		t.Fatalf("trigger of another account's order = %+v", r)
	}
	checkBooks(t, e.pool)
	var balance decimal.Decimal
	if err := e.pool.QueryRow(context.Background(), `SELECT balance FROM ledger.accounts WHERE id = 'A'`).Scan(&balance); err != nil {
		t.Fatal(err)
	}
	// o2 realized 4,000 x (151.000 - 150.010) = 3,960 JPY; o4 closed 5,000 EUR_USD at 1.09000 against
	// 1.10010 (-50.5 USD at the USD_JPY mid 151.005 = -7,625.75 -> -7,626 JPY).
	if !balance.Equal(d("996334")) {
		t.Errorf("balance of A = %s, want 996334", balance)
	}
	var fills int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger.executions WHERE order_id = 'o1'`).Scan(&fills); err != nil || fills != 1 {
		t.Fatalf("o1 executions = %d, %v", fills, err)
	}
}

// TestRoundAppliesEachCommandAsAlone applies commands of several accounts in one transaction, as
// commands delivered at the same time are: each gets its own result and inbox entry, the same as a
// redelivery of it answers afterwards; a command about an unknown account and a redelivered command
// share the round; and a round in which one command fails (two accounts placing the same order id)
// applies each command alone instead, so the others still succeed.
func TestRoundAppliesEachCommandAsAlone(t *testing.T) {
	e := newEnv(t, testConfig())
	e.open(t, "A", "JPY", "1000000")
	e.open(t, "B", "USD", "100000")
	e.open(t, "C", "JPY", "1000000")
	first := e.apply(t, market("C", "c1", "USD_JPY", "buy", "1000"))
	cmds := []*eventing.OrderCommandV1{
		market("B", "b1", "EUR_USD", "sell", "2000"),
		market("A", "a1", "USD_JPY", "buy", "1000"),
		market("nobody", "n1", "USD_JPY", "buy", "1"),
		market("C", "c1", "USD_JPY", "buy", "1000"),
		pending("A2", "a2", "USD_JPY", "buy", "1000", "limit", "100.000"),
	}
	e.open(t, "A2", "JPY", "1000000")
	res, errs := e.l.ApplyTogether(cmds)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", cmds[i].CommandID, err)
		}
	}
	if res[0].Status != eventing.ResultFilled || res[0].AccountID != "B" || !res[0].Price.Equal(d("1.10000")) ||
		res[1].Status != eventing.ResultFilled || res[1].AccountID != "A" || !res[1].Price.Equal(d("150.010")) ||
		res[2].Reason != ledger.ReasonAccountNotFound || res[4].Status != eventing.ResultAccepted {
		t.Fatalf("round results: %+v", res)
	}
	if res[3].ExecutionID != first.ExecutionID || !res[3].DecidedAt.Equal(first.DecidedAt) {
		t.Errorf("redelivered command in a round answered %+v, want its first result %+v", res[3], first)
	}
	for i, c := range cmds {
		again := e.apply(t, c)
		if again.Status != res[i].Status || again.ExecutionID != res[i].ExecutionID || again.Reason != res[i].Reason ||
			!again.DecidedAt.Equal(res[i].DecidedAt) {
			t.Errorf("%s redelivered alone answered %+v, in the round %+v", c.CommandID, again, res[i])
		}
	}
	if n := e.count(t, `SELECT count(*) FROM ledger.inbox`); n != 5 {
		t.Errorf("inbox entries = %d, want one per command (5)", n)
	}
	clash := []*eventing.OrderCommandV1{market("A", "same", "USD_JPY", "buy", "1000"), market("B", "same", "EUR_USD", "buy", "1000")}
	clash[1].CommandID = "place:B:same"
	res, errs = e.l.ApplyTogether(clash)
	if errs[0] != nil || errs[1] != nil || res[0].Status != eventing.ResultFilled || res[1].Reason != ledger.ReasonDuplicateOrderID {
		t.Fatalf("round with a clashing order id: %+v %v", res, errs)
	}
	checkBooks(t, e.pool)
	eventually(t, "the outbox emptied", func() bool { return e.count(t, `SELECT count(*) FROM ledger.outbox`) == 0 })
}

// TestRoundDrainsRowsLeftBehind: an outbox row older than the stale limit (a publish that failed, a
// replica that died) is published by the next round of any account. No sweep runs here, so only the
// round can publish it.
func TestRoundDrainsRowsLeftBehind(t *testing.T) {
	e := newEnv(t, testConfig())
	e.open(t, "A", "JPY", "10000000")
	e.open(t, "B", "JPY", "10000000")
	e.apply(t, market("B", "b1", "USD_JPY", "buy", "1000"))
	eventually(t, "the outbox emptied", func() bool { return e.count(t, `SELECT count(*) FROM ledger.outbox`) == 0 })
	if _, err := e.pool.Exec(context.Background(), `INSERT INTO ledger.outbox
		(topic, event_type, event_id, partition_key, data, created_at)
		SELECT $1, $2, 'left-behind', account_id, convert_to(result::text, 'UTF8'), now() - interval '3 seconds'
		FROM ledger.inbox WHERE command_id = 'place:b1'`, eventing.TopicOrderResults, eventing.TypeOrderResult); err != nil {
		t.Fatal(err)
	}
	e.apply(t, market("A", "a1", "USD_JPY", "buy", "1000"))
	eventually(t, "the outbox emptied", func() bool { return e.count(t, `SELECT count(*) FROM ledger.outbox`) == 0 })
	var order []string
	for _, ev := range readTopic(t, e.brokers, eventing.TopicOrderResults) {
		order = append(order, ev.ID())
	}
	if !slices.Contains(order, "left-behind") || !slices.Contains(order, ledger.ResultEventID("place:a1")) {
		t.Fatalf("results topic holds %v; want the row left behind and A's result", order)
	}
}

func postEvent(t *testing.T, url string, ev cloudevents.Event, structured bool) (int, []byte) {
	t.Helper()
	var req *http.Request
	var err error
	if structured {
		body, _ := json.Marshal(ev)
		req, err = http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/cloudevents+json")
	} else {
		req, err = cehttp.NewHTTPRequestFromEvent(context.Background(), url, ev)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes()
}

func TestHandlerDeliverySemantics(t *testing.T) {
	e := newEnv(t, testConfig())
	e.open(t, "A", "JPY", "1000000")
	cmd := market("A", "h1", "USD_JPY", "buy", "1000")
	ev, err := eventing.NewEvent(eventing.TypeOrderCommand, cmd.CommandID, cmd)
	if err != nil {
		t.Fatal(err)
	}
	for _, structured := range []bool{false, true} {
		status, body := postEvent(t, e.srv.URL+"/", ev, structured)
		var res eventing.OrderResultV1
		if status != http.StatusOK || json.Unmarshal(body, &res) != nil || res.Status != eventing.ResultFilled {
			t.Fatalf("structured=%v: %d %s", structured, status, body)
		}
	}
	bad := cloudevents.NewEvent()
	bad.SetID("x")
	bad.SetSource("/test")
	bad.SetType(eventing.TypeOrderCommand)
	_ = bad.SetData("application/json", map[string]string{"commandId": "c", "kind": "launch", "accountId": "A"})
	if status, body := postEvent(t, e.srv.URL+"/", bad, false); status != http.StatusBadRequest {
		t.Errorf("invalid command: %d %s, want 400 (dead letter)", status, body)
	}
	wrongKey := ev.Clone()
	wrongKey.SetExtension(eventing.ExtensionPartitionKey, "B")
	if status, _ := postEvent(t, e.srv.URL+"/", wrongKey, false); status != http.StatusBadRequest {
		t.Errorf("wrong partition key: %d, want 400", status)
	}
	// With the database gone a command is answered 503, so the dispatcher redelivers it.
	e.pool.Close()
	cmd2 := market("A", "h2", "USD_JPY", "buy", "1000")
	ev2, _ := eventing.NewEvent(eventing.TypeOrderCommand, cmd2.CommandID, cmd2)
	if status, body := postEvent(t, e.srv.URL+"/", ev2, false); status != http.StatusServiceUnavailable {
		t.Errorf("database down: %d %s, want 503", status, body)
	}
}

// TestCommandBeforeFirstQuotesWaitsForThem: right after a start the ledger has no quotes yet; an
// order delivered then waits for the first quotes and fills, instead of being rejected no_price. With
// no quotes at all it is rejected no_price after the bounded wait: a final answer, not a redelivery.
func TestCommandBeforeFirstQuotesWaitsForThem(t *testing.T) {
	e := newEnv(t, testConfig())
	e.open(t, "A", "JPY", "1000000")
	e.book = ledger.NewQuoteBook() // a ledger that has just started
	srv := httptest.NewServer(e.newLedger(t).Handler())
	t.Cleanup(srv.Close)
	post := func(url string, cmd *eventing.OrderCommandV1) <-chan eventing.OrderResultV1 {
		ev, err := eventing.NewEvent(eventing.TypeOrderCommand, cmd.CommandID, cmd)
		if err != nil {
			t.Fatal(err)
		}
		out := make(chan eventing.OrderResultV1, 1)
		go func() {
			status, body := postEvent(t, url+"/", ev, false)
			var res eventing.OrderResultV1
			if status != http.StatusOK || json.Unmarshal(body, &res) != nil {
				t.Errorf("%s: %d %s", cmd.CommandID, status, body)
			}
			out <- res
		}()
		return out
	}
	early := post(srv.URL, market("A", "q1", "USD_JPY", "buy", "1000"))
	select {
	case res := <-early:
		t.Fatalf("answered before any quote arrived: %+v", res)
	case <-time.After(300 * time.Millisecond):
	}
	setQuotes(e.book)
	if res := <-early; res.Status != eventing.ResultFilled {
		t.Fatalf("order delivered before the first quotes: %+v, want filled", res)
	}

	e.book = ledger.NewQuoteBook() // and one whose rates never come
	never := httptest.NewServer(e.newLedger(t).Handler())
	t.Cleanup(never.Close)
	if res := <-post(never.URL, market("A", "q2", "USD_JPY", "buy", "1000")); res.Status != eventing.ResultRejected || res.Reason != ledger.ReasonNoPrice {
		t.Fatalf("order with no quotes ever: %+v, want rejected %s", res, ledger.ReasonNoPrice)
	}
}

func TestOpenAccountIsIdempotent(t *testing.T) {
	e := newEnv(t, testConfig())
	ctx := context.Background()
	created, err := e.l.OpenAccount(ctx, "A", "USD", d("100.25"))
	if err != nil || !created {
		t.Fatalf("open = %v, %v", created, err)
	}
	if created, err := e.l.OpenAccount(ctx, "A", "USD", d("100.25")); err != nil || created {
		t.Fatalf("reopen = %v, %v", created, err)
	}
	if _, err := e.l.OpenAccount(ctx, "A", "JPY", d("100")); err == nil {
		t.Fatal("reopen with other terms succeeded")
	}
	for _, c := range []struct {
		id, ccy, dep string
	}{{"B", "EUR", "1"}, {"B", "USD", "-1"}, {"B", "JPY", "1.5"}, {"bad id", "USD", "1"}} {
		if _, err := e.l.OpenAccount(ctx, c.id, fx.Currency(c.ccy), d(c.dep)); err == nil {
			t.Errorf("open %+v succeeded", c)
		}
	}
	checkBooks(t, e.pool)
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM ledger.transactions WHERE account_id = 'A'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("opening transactions = %d, %v", n, err)
	}
	_ = fmt.Sprint()
}

// TestBooksDetectCorruption shows the invariant checks can fail: the database refuses an unbalanced
// journal entry at commit, and CheckBooks reports a balance that disagrees with its postings and a
// duplicated execution.
func TestBooksDetectCorruption(t *testing.T) {
	e := newEnv(t, testConfig())
	ctx := context.Background()
	e.open(t, "A", "JPY", "1000")
	e.apply(t, market("A", "o1", "USD_JPY", "buy", "10"))
	_, err := e.pool.Exec(ctx, `INSERT INTO ledger.postings (entry_account, entry_tx, book, currency, amount, posted_at)
		VALUES ('A', 1, 'house:dealer', 'JPY', 5, now())`)
	if err == nil {
		t.Fatal("an unbalanced posting was committed")
	}
	if v, err := ledgertest.CheckBooks(ctx, e.pool); err != nil || len(v) != 0 {
		t.Fatalf("clean books: %v %v", v, err)
	}
	if _, err := e.pool.Exec(ctx, `UPDATE ledger.accounts SET balance = balance + 1 WHERE id = 'A'`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `INSERT INTO ledger.orders SELECT 'o2', account_id, 99, NULL, pair, side, units, type, price,
		price_bound, time_in_force, good_till, status, reason, 'x', NULL, created_at, updated_at FROM ledger.orders WHERE id = 'o1'`); err != nil {
		t.Fatal(err)
	}
	v, err := ledgertest.CheckBooks(ctx, e.pool)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"balance differs from its postings": false, "filled order without exactly one execution": false}
	for _, s := range v {
		for k := range want {
			if strings.HasPrefix(s, k) {
				want[k] = true
			}
		}
	}
	for k, found := range want {
		if !found {
			t.Errorf("CheckBooks missed %q: %v", k, v)
		}
	}
}
