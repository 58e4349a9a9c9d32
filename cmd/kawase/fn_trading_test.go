package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/ledger"
	"github.com/kawase-fx/kawase/functions/ledger/ledgertest"
	"github.com/kawase-fx/kawase/functions/trading"
)

// Sizes of the trading end-to-end tests.
const (
	tradingTestAdmin    = "trading-test-admin-token-0123456789"
	tradingTestWaitSec  = 180
	quoteRefreshMs      = 200
	orderingAccounts    = 50
	orderingCommands    = 40
	orderingAccountsMax = 200
	orderingCommandsMax = 100
	idempotencyRequests = 100
)

var tradingLongTests = flag.Bool("kawase.long", true, "run the trading tests at the issue's full size (200 accounts x 100 commands); false runs a quick smaller version")

// tradingStack is the trading path of kawase, every part real: the trading and ledger components as
// `kawase serve` builds them, on real HTTP; the ledger's gRPC query service on TCP; PostgreSQL; the
// embedded broker over TCP; an ordered dispatcher from kawase.commands to the ledger (Knative's
// KafkaSource, played by ledgertest.Dispatcher); and quotes from a RateService gRPC stream.
type tradingStack struct {
	quoteMu sync.Mutex
	url     string
	book    *ledger.QuoteBook
	pool    *pgxpool.Pool
	disp    *ledgertest.Dispatcher
	httpc   *http.Client
	reg     *prometheus.Registry
}

func startTradingStack(tb testing.TB) *tradingStack { return startTradingStackWith(tb, false) }

// startTradingStackWith builds the stack; with realRates the quotes come from the rates service
// itself (functions/rates, as kawase serve rates builds it) tailing kawase.rates, where the test
// publishes kawase.rate.v1 events as the feeder would.
func startTradingStackWith(tb testing.TB, realRates bool) *tradingStack {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() { cancel(); wg.Wait() })
	dbURL := pgtest.URL(tb)
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.Close)
	brokers := []string{b.Addr()}
	if err := broker.EnsureTopics(ctx, brokers, eventing.Topics()); err != nil {
		tb.Fatal(err)
	}
	st := &tradingStack{book: ledger.NewQuoteBook(),
		httpc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
	st.refreshQuotes(nil)
	wg.Go(func() {
		t := time.NewTicker(quoteRefreshMs * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				st.refreshQuotes(nil)
			}
		}
	})
	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	st.reg = prometheus.NewRegistry()
	d := componentDeps{cfg: config{Mode: modeDev, AdminToken: tradingTestAdmin}, log: zap.NewNop().Sugar(),
		reg: st.reg, health: observe.NewHealth(), dbURL: dbURL, brokers: brokers, ledgerGRPC: grpcLn.Addr().String()}
	if realRates {
		d.cfg.Pairs = tradingRatePairs
		d.ratesGRPC = st.startRatesService(ctx, tb, d, &wg)
	} else {
		ratesAddr, stopRates, err := ledgertest.ServeRates(st.book)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(stopRates)
		d.ratesGRPC = ratesAddr
	}
	lc, err := newLedgerComponent(ctx, d)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(lc.close)
	gs := grpc.NewServer()
	lc.grpc(gs)
	go func() { _ = gs.Serve(grpcLn) }()
	tb.Cleanup(gs.Stop)
	ledgerSrv := httptest.NewServer(lc.handler)
	tb.Cleanup(ledgerSrv.Close)
	tc, err := newTradingComponent(ctx, d)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(tc.close)
	mux := http.NewServeMux()
	for _, p := range tc.public {
		mux.Handle(p, tc.handler)
	}
	mux.Handle("/_svc/trading/", http.StripPrefix("/_svc/trading", tc.handler))
	tradingSrv := httptest.NewServer(mux)
	tb.Cleanup(tradingSrv.Close)
	st.url = tradingSrv.URL
	st.disp = &ledgertest.Dispatcher{Brokers: brokers, Topic: eventing.TopicCommands, Group: "kawase-ledger",
		URL: ledgerSrv.URL + "/"}
	for _, run := range []func(context.Context) error{lc.run, tc.run, st.disp.Run} {
		wg.Go(func() { _ = run(ctx) })
	}
	pool, err := pgdb.Open(ctx, dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	st.pool = pool
	waitTrading(tb, "the stack to be ready", func() bool { return len(d.health.Check(ctx)) == 0 })
	st.waitTradeable(tb)
	return st
}

// tradingRatePairs are the pairs the real rates service serves in the tests.
var tradingRatePairs = []fx.Pair{"USD_JPY", "EUR_USD", "EUR_JPY"}

// startRatesService runs the rates component on its own gRPC port and publishes the book's quotes of
// tradingRatePairs to kawase.rates every quoteRefreshMs, as the feeder would; it returns the gRPC
// address.
func (st *tradingStack) startRatesService(ctx context.Context, tb testing.TB, d componentDeps, wg *sync.WaitGroup) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	d.ratesGRPC = ln.Addr().String()
	rc, err := newRatesComponent(ctx, d)
	if err != nil {
		tb.Fatal(err)
	}
	if rc.close != nil {
		tb.Cleanup(rc.close)
	}
	gs := grpc.NewServer()
	rc.grpc(gs)
	go func() { _ = gs.Serve(ln) }()
	tb.Cleanup(gs.Stop)
	wg.Go(func() { _ = rc.run(ctx) })
	w := cekafka.NewWriter(d.brokers, eventing.TopicRates)
	tb.Cleanup(func() { w.Close() })
	wg.Go(func() {
		t := time.NewTicker(quoteRefreshMs * time.Millisecond)
		defer t.Stop()
		for seq := int64(1); ; seq++ {
			var evs []cloudevents.Event
			now := time.Now().UTC()
			for _, p := range tradingRatePairs {
				q, _ := st.book.Quote(p)
				r := &eventing.RateV1{Pair: p, Bid: q.Bid, Ask: q.Ask, BidSize: decimal.NewFromInt(1_000_000),
					AskSize: decimal.NewFromInt(1_000_000), ProviderTime: now, QuoteID: fmt.Sprint(seq), Session: "FIX.4.4:SIM->KAWASE",
					MsgSeqNum: int(seq), Epoch: 1, Seq: seq, ReceivedAt: now}
				ev, err := eventing.NewEvent(eventing.TypeRate, r.EventID(), r)
				if err != nil {
					panic(err)
				}
				evs = append(evs, ev)
			}
			_ = cekafka.Publish(ctx, w, evs...)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return d.ratesGRPC
}

// refreshQuotes re-stamps every quote with the current time, changing the bid and ask of the pairs in
// set (quotes start around the catalogue's reference mids).
func (st *tradingStack) refreshQuotes(set map[fx.Pair][2]string) {
	st.quoteMu.Lock()
	defer st.quoteMu.Unlock()
	b := st.book
	now := time.Now().UTC()
	for _, spec := range fx.Pairs() {
		q, ok := b.Quote(spec.Pair)
		if !ok {
			half := spec.ReferenceMid.Shift(-4).Round(spec.Precision)
			if half.IsZero() {
				half = decimal.New(1, -spec.Precision)
			}
			q = ledger.Quote{Pair: spec.Pair, Bid: spec.ReferenceMid.Sub(half), Ask: spec.ReferenceMid.Add(half), Tradeable: true}
		}
		if v, ok := set[spec.Pair]; ok {
			q.Bid, q.Ask = decimal.RequireFromString(v[0]), decimal.RequireFromString(v[1])
		}
		q.Time = now
		q.QuoteID = fmt.Sprint(now.UnixNano())
		b.Set(q)
	}
}

func waitTrading(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(tradingTestWaitSec * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// waitTradeable waits until an order on a scratch account fills (the ledger has quotes over gRPC).
func (st *tradingStack) waitTradeable(tb testing.TB) {
	tb.Helper()
	a := st.openAccount(tb, "JPY", "1000000")
	waitTrading(tb, "a first fill", func() bool {
		status, body := st.do(tb, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token,
			map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1"}, nil)
		var o trading.OrderView
		return status == http.StatusCreated && json.Unmarshal(body, &o) == nil && o.Status == "filled"
	})
}

// do sends a JSON request and returns the status and body.
func (st *tradingStack) do(tb testing.TB, method, path, token string, body any, header http.Header) (int, []byte) {
	tb.Helper()
	resp := st.raw(tb, method, path, token, body, header)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, raw
}

func (st *tradingStack) raw(tb testing.TB, method, path, token string, body any, header http.Header) *http.Response {
	tb.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(v)
	default:
		b, _ := json.Marshal(v)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, st.url+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := st.httpc.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	return resp
}

func (st *tradingStack) openAccount(tb testing.TB, ccy, deposit string) trading.NewAccountView {
	tb.Helper()
	status, body := st.do(tb, http.MethodPost, "/v1/accounts", tradingTestAdmin, map[string]string{"currency": ccy, "deposit": deposit}, nil)
	var a trading.NewAccountView
	if status != http.StatusCreated || json.Unmarshal(body, &a) != nil || a.Token == "" {
		tb.Fatalf("open account: %d %s", status, body)
	}
	return a
}

func (st *tradingStack) checkBooks(tb testing.TB) {
	tb.Helper()
	v, err := ledgertest.CheckBooks(context.Background(), st.pool)
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range v {
		tb.Error(s)
	}
}

func tradingProblemCode(body []byte) string {
	var p struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(body, &p)
	return p.Code
}

// transactions reads every transaction of an account through the REST API, following next links.
func (st *tradingStack) transactions(tb testing.TB, acct, token string, pageSize int) []trading.TransactionView {
	tb.Helper()
	var out []trading.TransactionView
	path := fmt.Sprintf("/v1/accounts/%s/transactions?pageSize=%d", acct, pageSize)
	for path != "" {
		status, body := st.do(tb, http.MethodGet, path, token, nil, nil)
		var p trading.TransactionPage
		if status != http.StatusOK || json.Unmarshal(body, &p) != nil {
			tb.Fatalf("transactions: %d %s", status, body)
		}
		out = append(out, p.Transactions...)
		path = p.Next
	}
	return out
}

// TestTradingOrderingThroughREST sends, for many accounts at once, a stream of commands each (market
// orders both ways, limit orders, cancels) through the REST API, one at a time per account as a
// client would, and checks that every account's transaction log holds exactly the accepted commands,
// in the order they were accepted, numbered without gaps.
func TestTradingOrderingThroughREST(t *testing.T) {
	accounts, commands := orderingAccounts, orderingCommands
	if *tradingLongTests {
		accounts, commands = orderingAccountsMax, orderingCommandsMax
	}
	st := startTradingStack(t)
	type acct struct {
		view     trading.NewAccountView
		accepted []string
	}
	accts := make([]*acct, accounts)
	for i := range accts {
		accts[i] = &acct{view: st.openAccount(t, "JPY", "100000000")}
	}
	var wg sync.WaitGroup
	errs := make(chan string, accounts)
	for _, a := range accts {
		wg.Go(func() {
			if msg := tradingOrderingClient(t, st, a.view, commands, &a.accepted); msg != "" {
				errs <- msg
			}
		})
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Fatal(msg)
	}
	for _, a := range accts {
		want := len(a.accepted) + 1
		waitTrading(t, "every command applied", func() bool {
			var n int
			_ = st.pool.QueryRow(context.Background(), `SELECT tx_seq FROM ledger.accounts WHERE id = $1`, a.view.ID).Scan(&n)
			return n >= want
		})
		txs := st.transactions(t, a.view.ID, a.view.Token, 7)
		if len(txs) != want {
			t.Fatalf("%s: %d transactions, want %d", a.view.ID, len(txs), want)
		}
		for i, tx := range txs {
			if tx.ID != fmt.Sprint(i+1) {
				t.Fatalf("%s: transaction %d has id %s", a.view.ID, i+1, tx.ID)
			}
			if i > 0 && tx.CommandID != a.accepted[i-1] {
				t.Fatalf("%s: transaction %d is %s, want the %d-th accepted command %s", a.view.ID, i+1, tx.CommandID, i, a.accepted[i-1])
			}
		}
	}
	st.checkBooks(t)
	t.Logf("%d accounts x %d commands applied in acceptance order", accounts, commands)
}

// orderingClient is one account's client: it sends commands one at a time and records the command id
// of each accepted one; it returns a failure description, or "".
func tradingOrderingClient(t *testing.T, st *tradingStack, a trading.NewAccountView, commands int, accepted *[]string) string {
	var lastLimit string
	for k := range commands {
		switch {
		case k%5 == 4:
			status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token,
				map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1000", "type": "limit", "price": "100.000"}, nil)
			var o trading.OrderView
			if status != http.StatusCreated && status != http.StatusAccepted || json.Unmarshal(body, &o) != nil {
				return fmt.Sprintf("%s limit: %d %s", a.ID, status, body)
			}
			*accepted = append(*accepted, "place:"+o.ID)
			lastLimit = o.ID
		case k%5 == 2 && lastLimit != "":
			status, body := st.do(t, http.MethodDelete, "/v1/accounts/"+a.ID+"/orders/"+lastLimit, a.Token, nil, nil)
			if status != http.StatusOK && status != http.StatusAccepted {
				return fmt.Sprintf("%s cancel: %d %s", a.ID, status, body)
			}
			*accepted = append(*accepted, "cancel:"+lastLimit)
			lastLimit = ""
		default:
			side := "buy"
			if k%2 == 1 {
				side = "sell"
			}
			pair := []string{"USD_JPY", "EUR_USD", "EUR_JPY", "GBP_USD"}[k%4]
			status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token,
				map[string]string{"pair": pair, "side": side, "units": "1000"}, nil)
			var o trading.OrderView
			if status != http.StatusCreated && status != http.StatusAccepted || json.Unmarshal(body, &o) != nil {
				return fmt.Sprintf("%s market: %d %s", a.ID, status, body)
			}
			if status == http.StatusCreated && o.Status != "filled" {
				return fmt.Sprintf("%s market order %s: %s %s", a.ID, o.ID, o.Status, o.Reason)
			}
			*accepted = append(*accepted, "place:"+o.ID)
		}
	}
	return ""
}

// TestTradingIdempotency fires identical POSTs with one Idempotency-Key concurrently: one order is
// created, every answer is its first response (or 409 while that is in flight), a later retry replays
// it, and the key with another body is refused with 422.
func TestTradingIdempotency(t *testing.T) {
	st := startTradingStack(t)
	a := st.openAccount(t, "JPY", "10000000")
	order := map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1000", "clientOrderId": "idem-1"}
	key := http.Header{"Idempotency-Key": {"key-1"}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	var firstBody []byte
	start := make(chan struct{})
	for range idempotencyRequests {
		wg.Go(func() {
			<-start
			status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token, order, key)
			mu.Lock()
			defer mu.Unlock()
			statuses[status]++
			if status == http.StatusCreated {
				if firstBody != nil && !bytes.Equal(firstBody, body) {
					t.Errorf("two different answers to one key:\n%s\n%s", firstBody, body)
				}
				firstBody = body
			} else if status != http.StatusConflict || tradingProblemCode(body) != "idempotency_key_in_flight" {
				t.Errorf("answer %d %s", status, body)
			}
		})
	}
	close(start)
	wg.Wait()
	if statuses[http.StatusCreated] == 0 {
		t.Fatalf("no request succeeded: %v", statuses)
	}
	status, body := st.do(t, http.MethodGet, "/v1/accounts/"+a.ID+"/orders", a.Token, nil, nil)
	var page trading.OrderPage
	if status != http.StatusOK || json.Unmarshal(body, &page) != nil {
		t.Fatalf("list: %d %s", status, body)
	}
	// The scratch account of waitTradeable is another account: this one has exactly one order.
	if len(page.Orders) != 1 || page.Orders[0].ClientOrderID != "idem-1" {
		t.Fatalf("orders after %d identical requests: %s", idempotencyRequests, body)
	}
	resp := st.raw(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token, order, key)
	replayed, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || !bytes.Equal(replayed, firstBody) || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d %s", resp.StatusCode, replayed)
	}
	other := map[string]string{"pair": "USD_JPY", "side": "sell", "units": "1000"}
	if status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token, other, key); status != http.StatusUnprocessableEntity || tradingProblemCode(body) != "idempotency_key_reused" {
		t.Fatalf("other body, same key: %d %s", status, body)
	}
	var executions int
	if err := st.pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger.executions WHERE account_id = $1`, a.ID).Scan(&executions); err != nil || executions != 1 {
		t.Fatalf("executions = %d, %v", executions, err)
	}
	t.Logf("answers: %v", statuses)
	// Once the key's record has expired, the key with another order is still refused (the ledger's
	// inbox keeps the key's order id for good), and with the first order it is answered with that
	// order, which the ledger applied once.
	var first trading.OrderView
	if err := json.Unmarshal(firstBody, &first); err != nil {
		t.Fatal(err)
	}
	forget := func() {
		if _, err := st.pool.Exec(context.Background(), `DELETE FROM trading.idempotency WHERE key = 'key-1'`); err != nil {
			t.Fatal(err)
		}
	}
	forget()
	if status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token, other, key); status != http.StatusUnprocessableEntity || tradingProblemCode(body) != "idempotency_key_reused" {
		t.Fatalf("other body, expired key: %d %s (first order %s)", status, body, first.ID)
	}
	forget()
	var again trading.OrderView
	status, body = st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token, order, key)
	if status != http.StatusCreated || json.Unmarshal(body, &again) != nil || again.ID != first.ID {
		t.Fatalf("first body, expired key: %d %s (first order %s)", status, body, first.ID)
	}
	if err := st.pool.QueryRow(context.Background(), `SELECT count(*) FROM ledger.executions WHERE account_id = $1`, a.ID).Scan(&executions); err != nil || executions != 1 {
		t.Fatalf("executions after the expired key's two requests = %d, %v; want 1", executions, err)
	}
	// Account creation is idempotent too, but its token is never stored: a replay shows the account
	// without it.
	acctKey := http.Header{"Idempotency-Key": {"open-1"}}
	req := map[string]string{"currency": "USD", "deposit": "100"}
	status, body = st.do(t, http.MethodPost, "/v1/accounts", tradingTestAdmin, req, acctKey)
	var created, replay trading.NewAccountView
	if status != http.StatusCreated || json.Unmarshal(body, &created) != nil || created.Token == "" {
		t.Fatalf("open with a key: %d %s", status, body)
	}
	status, body = st.do(t, http.MethodPost, "/v1/accounts", tradingTestAdmin, req, acctKey)
	if status != http.StatusCreated || json.Unmarshal(body, &replay) != nil || replay.ID != created.ID || replay.Token != "" {
		t.Fatalf("replayed open: %d %s", status, body)
	}
	var leaked int
	if err := st.pool.QueryRow(context.Background(), `SELECT count(*) FROM trading.idempotency
		WHERE position(convert_to($1, 'UTF8') in body) > 0`, created.Token).Scan(&leaked); err != nil || leaked != 0 {
		t.Fatalf("token stored in idempotency records: %d %v", leaked, err)
	}
	if status, _ := st.do(t, http.MethodGet, "/v1/accounts/"+created.ID, created.Token, nil, nil); status != http.StatusOK {
		t.Fatalf("the first token does not work: %d", status)
	}
	// An account refused for its deposit leaves no token behind.
	countKeys := func() (n int) {
		if err := st.pool.QueryRow(context.Background(), `SELECT count(*) FROM trading.api_keys`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	keys := countKeys()
	for _, bad := range []map[string]string{{"currency": "JPY", "deposit": "100.5"}, {"currency": "USD", "deposit": "1.005"},
		{"currency": "USD", "deposit": "1e70000"}} {
		if status, body := st.do(t, http.MethodPost, "/v1/accounts", tradingTestAdmin, bad, nil); status != http.StatusUnprocessableEntity || tradingProblemCode(body) != "invalid_account" {
			t.Errorf("open %v: %d %s", bad, status, body)
		}
	}
	if got := countKeys(); got != keys {
		t.Errorf("refused accounts left %d token rows", got-keys)
	}
	st.checkBooks(t)
}

// TestTradingOrdersEndToEnd walks the order API: a market order answered filled, a rejection with its
// reason, a limit order pending then filled by the watcher when the price crosses, lookup by client
// order id, cancel and cancel again, positions, trades, the account's margin figures and the limits.
func TestTradingOrdersEndToEnd(t *testing.T) {
	st := startTradingStack(t)
	a := st.openAccount(t, "JPY", "1000000")
	path := "/v1/accounts/" + a.ID
	status, body := st.do(t, http.MethodPost, path+"/orders", a.Token,
		map[string]string{"pair": "USD_JPY", "side": "buy", "units": "10000", "clientOrderId": "m-1"}, nil)
	var o trading.OrderView
	if status != http.StatusCreated || json.Unmarshal(body, &o) != nil || o.Status != "filled" || o.Execution == nil ||
		o.Execution.AccountSeq != 1 || o.Href != path+"/orders/"+o.ID {
		t.Fatalf("market order: %d %s", status, body)
	}
	status, body = st.do(t, http.MethodPost, path+"/orders", a.Token,
		map[string]string{"pair": "USD_JPY", "side": "buy", "units": "10000000"}, nil)
	if status != http.StatusCreated || json.Unmarshal(body, &o) != nil || o.Status != "rejected" || o.Reason != "insufficient_margin" {
		t.Fatalf("oversized order: %d %s", status, body)
	}
	q, _ := st.book.Quote("EUR_JPY")
	mid := q.Bid
	limitPrice := mid.Sub(decimal.NewFromInt(2)).StringFixed(3)
	status, body = st.do(t, http.MethodPost, path+"/orders", a.Token, map[string]string{"pair": "EUR_JPY", "side": "buy",
		"units": "1000", "type": "limit", "price": limitPrice, "clientOrderId": "lim-1"}, nil)
	var lim trading.OrderView
	if status != http.StatusCreated || json.Unmarshal(body, &lim) != nil || lim.Status != "pending" {
		t.Fatalf("limit order: %d %s", status, body)
	}
	status, body = st.do(t, http.MethodGet, path+"/orders/@lim-1", a.Token, nil, nil)
	if status != http.StatusOK || json.Unmarshal(body, &o) != nil || o.ID != lim.ID {
		t.Fatalf("by client order id: %d %s", status, body)
	}
	// The price falls through the limit: the watcher's trigger fills it.
	low := mid.Sub(decimal.NewFromInt(3))
	st.refreshQuotes(map[fx.Pair][2]string{"EUR_JPY": {low.StringFixed(3), low.Add(decimal.RequireFromString("0.02")).StringFixed(3)}})
	waitTrading(t, "the limit order to fill", func() bool {
		_, body := st.do(t, http.MethodGet, path+"/orders/"+lim.ID, a.Token, nil, nil)
		return json.Unmarshal(body, &o) == nil && o.Status == "filled"
	})
	if o.Execution == nil || o.Execution.Reason != "trigger" {
		t.Fatalf("triggered fill: %+v", o)
	}
	status, body = st.do(t, http.MethodPost, path+"/orders", a.Token, map[string]string{"pair": "USD_JPY", "side": "sell",
		"units": "1000", "type": "stop", "price": "100.000"}, nil)
	if status != http.StatusCreated || json.Unmarshal(body, &o) != nil || o.Status != "pending" {
		t.Fatalf("stop order: %d %s", status, body)
	}
	if status, body := st.do(t, http.MethodDelete, path+"/orders/"+o.ID, a.Token, nil, nil); status != http.StatusOK || !strings.Contains(string(body), `"cancelled"`) {
		t.Fatalf("cancel: %d %s", status, body)
	}
	if status, body := st.do(t, http.MethodDelete, path+"/orders/"+o.ID, a.Token, nil, nil); status != http.StatusConflict || tradingProblemCode(body) != "order_not_pending" {
		t.Fatalf("cancel again: %d %s", status, body)
	}
	status, body = st.do(t, http.MethodGet, path, a.Token, nil, nil)
	var acct trading.AccountView
	if status != http.StatusOK || json.Unmarshal(body, &acct) != nil || acct.MarginLevel == nil || acct.OpenPositionCount != 2 ||
		acct.Currency != "JPY" {
		t.Fatalf("account: %d %s", status, body)
	}
	nav, _ := decimal.NewFromString(acct.NAV)
	bal, _ := decimal.NewFromString(acct.Balance)
	upl, _ := decimal.NewFromString(acct.UnrealizedPL)
	if !nav.Equal(bal.Add(upl)) {
		t.Errorf("nav %s != balance %s + unrealized %s", nav, bal, upl)
	}
	status, body = st.do(t, http.MethodGet, path+"/positions", a.Token, nil, nil)
	var pos trading.PositionList
	if status != http.StatusOK || json.Unmarshal(body, &pos) != nil || len(pos.Positions) != 2 {
		t.Fatalf("positions: %d %s", status, body)
	}
	status, body = st.do(t, http.MethodGet, path+"/trades?pageSize=1", a.Token, nil, nil)
	var trades trading.TradePage
	if status != http.StatusOK || json.Unmarshal(body, &trades) != nil || len(trades.Trades) != 1 || trades.Next == "" {
		t.Fatalf("trades: %d %s", status, body)
	}
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{http.MethodGet, path + "/transactions?pageSize=501", nil, http.StatusBadRequest, "invalid_page_size"},
		{http.MethodGet, path + "/transactions?from=-1", nil, http.StatusBadRequest, "invalid_cursor"},
		{http.MethodGet, path + "/orders?status=open", nil, http.StatusBadRequest, "invalid_status"},
		{http.MethodPost, path + "/orders", []byte(`{"pair":"USD_JPY","side":"buy","units":"1","color":"red"}`), http.StatusBadRequest, "invalid_json"},
		{http.MethodPost, path + "/orders", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1.5"}, http.StatusUnprocessableEntity, "invalid_order"},
		{http.MethodPost, path + "/orders", map[string]string{"pair": "XXX_YYY", "side": "buy", "units": "1"}, http.StatusUnprocessableEntity, "invalid_order"},
		// Three bytes of exponent that would take gigabytes to compare or write out, and a price
		// that would make a command too large for the ledger after trading accepted it.
		{http.MethodPost, path + "/orders", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1e2000000000"}, http.StatusUnprocessableEntity, "invalid_order"},
		{http.MethodPost, path + "/orders", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1", "type": "limit", "price": "1e70000"}, http.StatusUnprocessableEntity, "invalid_order"},
		{http.MethodPost, path + "/orders", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1", "priceBound": "1e-2000000000"}, http.StatusUnprocessableEntity, "invalid_order"},
		{http.MethodPost, path + "/orders", bytes.Repeat([]byte(" "), 20<<10), http.StatusRequestEntityTooLarge, "body_too_large"},
		{http.MethodGet, path + "/orders/nope", nil, http.StatusNotFound, "order_not_found"},
		{http.MethodPut, path + "/orders/nope", nil, http.StatusMethodNotAllowed, "method_not_allowed"},
		{http.MethodGet, path + "/nothing", nil, http.StatusNotFound, "not_found"},
	} {
		if status, body := st.do(t, c.method, c.path, a.Token, c.body, nil); status != c.status || tradingProblemCode(body) != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, status, body, c.status, c.code)
		}
	}
	st.checkBooks(t)
}

// TestTradingRateLimit exhausts one token's budget: 429 with Retry-After, while another token is
// unaffected.
func TestTradingRateLimit(t *testing.T) {
	st := startTradingStack(t)
	a := st.openAccount(t, "JPY", "1000")
	b := st.openAccount(t, "JPY", "1000")
	var limited *http.Response
	for range 5 * trading.DefaultConfig().RateBurst {
		resp := st.raw(t, http.MethodGet, "/v1/accounts/"+b.ID, a.Token, nil, nil)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			limited = resp
			break
		}
	}
	if limited == nil || limited.Header.Get("Retry-After") == "" {
		t.Fatal("no 429 with Retry-After")
	}
	if status, _ := st.do(t, http.MethodGet, "/v1/accounts/"+b.ID, b.Token, nil, nil); status != http.StatusOK {
		t.Fatalf("other token: %d", status)
	}
}

// tradingCaller is one column of the authorization matrix.
type tradingCaller struct {
	name, token string
	// account is the caller's own account ("" for the admin and the anonymous).
	account string
}

// tradingEndpoint is one row: a request on target account t (its resources prepared by setup).
type tradingEndpoint struct {
	name string
	// trade marks endpoints that change an account: the admin may not call them.
	trade bool
	// ok is the status of an allowed call.
	ok   int
	call func(tb testing.TB, st *tradingStack, token string, t tradingTarget) (int, []byte)
}

// tradingTarget is an account whose resources the matrix addresses.
type tradingTarget struct {
	view    trading.NewAccountView
	orderID string
}

func (st *tradingStack) pendingOrder(tb testing.TB, a trading.NewAccountView) string {
	tb.Helper()
	status, body := st.do(tb, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token,
		map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1", "type": "limit", "price": "100.000"}, nil)
	var o trading.OrderView
	if status != http.StatusCreated || json.Unmarshal(body, &o) != nil || o.Status != "pending" {
		tb.Fatalf("pending order: %d %s", status, body)
	}
	return o.ID
}

// orderRequestEvent posts a kawase.order.request.v1 CloudEvent to trading.
func (st *tradingStack) orderRequestEvent(tb testing.TB, token, id string, data trading.OrderRequestEvent, structured bool) *http.Response {
	tb.Helper()
	raw, _ := json.Marshal(data)
	h := http.Header{}
	var body []byte
	if structured {
		env := map[string]any{"specversion": "1.0", "id": id, "source": "/test/producer", "type": trading.TypeOrderRequest,
			"datacontenttype": "application/json", "data": json.RawMessage(raw)}
		body, _ = json.Marshal(env)
		h.Set("Content-Type", "application/cloudevents+json")
	} else {
		body = raw
		h.Set("Content-Type", "application/json")
		h.Set("Ce-Specversion", "1.0")
		h.Set("Ce-Id", id)
		h.Set("Ce-Source", "/test/producer")
		h.Set("Ce-Type", trading.TypeOrderRequest)
	}
	return st.raw(tb, http.MethodPost, "/v1/order-requests", token, body, h)
}

var tradingEventSeq struct {
	sync.Mutex
	n int
}

func tradingNextEventID() string {
	tradingEventSeq.Lock()
	defer tradingEventSeq.Unlock()
	tradingEventSeq.n++
	return fmt.Sprintf("ev-%d", tradingEventSeq.n)
}

func tradingEndpoints() []tradingEndpoint {
	get := func(name, suffix string) tradingEndpoint {
		return tradingEndpoint{name: name, ok: http.StatusOK, call: func(tb testing.TB, st *tradingStack, token string, t tradingTarget) (int, []byte) {
			return st.do(tb, http.MethodGet, "/v1/accounts/"+t.view.ID+strings.ReplaceAll(suffix, "{order}", t.orderID), token, nil, nil)
		}}
	}
	return []tradingEndpoint{
		get("get account", ""),
		get("list orders", "/orders?status=pending"),
		get("get order", "/orders/{order}"),
		get("get order by client id", "/orders/@matrix"),
		get("list trades", "/trades"),
		get("list positions", "/positions"),
		get("list transactions", "/transactions?from=1&pageSize=10"),
		{name: "place order", trade: true, ok: http.StatusCreated, call: func(tb testing.TB, st *tradingStack, token string, t tradingTarget) (int, []byte) {
			return st.do(tb, http.MethodPost, "/v1/accounts/"+t.view.ID+"/orders", token,
				map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1"}, nil)
		}},
		{name: "cancel order", trade: true, ok: http.StatusOK, call: func(tb testing.TB, st *tradingStack, token string, t tradingTarget) (int, []byte) {
			return st.do(tb, http.MethodDelete, "/v1/accounts/"+t.view.ID+"/orders/"+st.pendingOrder(tb, t.view), token, nil, nil)
		}},
		{name: "order request event", trade: true, ok: http.StatusCreated, call: func(tb testing.TB, st *tradingStack, token string, t tradingTarget) (int, []byte) {
			resp := st.orderRequestEvent(tb, token, tradingNextEventID(), trading.OrderRequestEvent{AccountID: t.view.ID, Action: trading.ActionPlace,
				Order: &trading.OrderRequest{Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1)}}, false)
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, body
		}},
	}
}

// TestTradingAuthorizationMatrix checks every cell of {account A, account B, admin, no token, bad
// token} x every endpoint x {own, other's} resources.
func TestTradingAuthorizationMatrix(t *testing.T) {
	st := startTradingStack(t)
	targets := map[string]tradingTarget{}
	for _, name := range []string{"A", "B"} {
		v := st.openAccount(t, "JPY", "1000000")
		status, body := st.do(t, http.MethodPost, "/v1/accounts/"+v.ID+"/orders", v.Token, map[string]string{"pair": "USD_JPY",
			"side": "buy", "units": "1", "type": "limit", "price": "100.000", "clientOrderId": "matrix"}, nil)
		var o trading.OrderView
		if status != http.StatusCreated || json.Unmarshal(body, &o) != nil {
			t.Fatalf("setup order: %d %s", status, body)
		}
		targets[name] = tradingTarget{view: v, orderID: o.ID}
	}
	callers := []tradingCaller{
		{name: "A", token: targets["A"].view.Token, account: "A"},
		{name: "B", token: targets["B"].view.Token, account: "B"},
		{name: "admin", token: tradingTestAdmin},
		{name: "none"},
		{name: "bad", token: "kawase_not-a-real-token"},
	}
	cells := 0
	for _, c := range callers {
		for _, ep := range tradingEndpoints() {
			for _, rel := range []string{"own", "other's"} {
				target := map[string]string{"A": "A", "B": "B", "": "A"}[c.account]
				if rel == "other's" {
					target = map[string]string{"A": "B", "B": "A", "": "B"}[c.account]
				}
				status, body := ep.call(t, st, c.token, targets[target])
				wantStatus, wantCode := tradingExpectedCell(c, ep, rel)
				cells++
				if status != wantStatus || (wantCode != "" && tradingProblemCode(body) != wantCode) {
					t.Errorf("%s x %s x %s: %d %s, want %d %s", c.name, ep.name, rel, status, body, wantStatus, wantCode)
				}
			}
		}
		status, body := st.do(t, http.MethodPost, "/v1/accounts", c.token, map[string]string{"currency": "USD", "deposit": "10"}, nil)
		wantStatus, wantCode := http.StatusForbidden, "admin_only"
		switch c.name {
		case "admin":
			wantStatus, wantCode = http.StatusCreated, ""
		case "none":
			wantStatus, wantCode = http.StatusUnauthorized, "unauthenticated"
		case "bad":
			wantStatus, wantCode = http.StatusUnauthorized, "invalid_token"
		}
		cells++
		if status != wantStatus || (wantCode != "" && tradingProblemCode(body) != wantCode) {
			t.Errorf("%s x open account: %d %s, want %d %s", c.name, status, body, wantStatus, wantCode)
		}
	}
	// An order id of B under A's own path is no order of A's.
	a, b := targets["A"], targets["B"]
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		cells++
		if status, body := st.do(t, method, "/v1/accounts/"+a.view.ID+"/orders/"+b.orderID, a.view.Token, nil, nil); status != http.StatusNotFound || tradingProblemCode(body) != "order_not_found" {
			t.Errorf("A %s B's order under A: %d %s", method, status, body)
		}
	}
	t.Logf("%d cells checked", cells)
}

func tradingExpectedCell(c tradingCaller, ep tradingEndpoint, rel string) (int, string) {
	switch {
	case c.name == "none":
		return http.StatusUnauthorized, "unauthenticated"
	case c.name == "bad":
		return http.StatusUnauthorized, "invalid_token"
	case c.name == "admin" && ep.trade:
		return http.StatusForbidden, "admin_cannot_trade"
	case c.name == "admin", rel == "own":
		return ep.ok, ""
	}
	return http.StatusNotFound, "account_not_found"
}

// TestTradingOrderRequestEvents places and cancels orders as CloudEvents, in binary and structured
// mode: the answer is a kawase.order.response.v1 CloudEvent, and a redelivered event (same source and
// id) answers the first response without a second order.
func TestTradingOrderRequestEvents(t *testing.T) {
	st := startTradingStack(t)
	a := st.openAccount(t, "USD", "100000")
	place := trading.OrderRequestEvent{AccountID: a.ID, Action: trading.ActionPlace,
		Order: &trading.OrderRequest{Pair: "EUR_USD", Side: "sell", Units: decimal.NewFromInt(2000), ClientOrderID: "ce-1"}}
	var first []byte
	for i, structured := range []bool{false, true, false} {
		resp := st.orderRequestEvent(t, a.Token, "ce-place-1", place, structured)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || resp.Header.Get("Ce-Type") != trading.TypeOrderResponse ||
			resp.Header.Get("Ce-Id") != "response:ce-place-1" {
			t.Fatalf("attempt %d: %d %v %s", i, resp.StatusCode, resp.Header, body)
		}
		var o trading.OrderView
		if json.Unmarshal(body, &o) != nil || o.Status != "filled" || o.ClientOrderID != "ce-1" || resp.Header.Get("Ce-Subject") != o.ID {
			t.Fatalf("attempt %d: %s", i, body)
		}
		if first == nil {
			first = body
		} else if !bytes.Equal(first, body) {
			t.Fatalf("redelivery answered differently:\n%s\n%s", first, body)
		}
	}
	if status, body := st.do(t, http.MethodGet, "/v1/accounts/"+a.ID+"/trades", a.Token, nil, nil); status != http.StatusOK || strings.Count(string(body), `"accountSeq"`) != 1 {
		t.Fatalf("trades after a redelivered event: %d %s", status, body)
	}
	pend := trading.OrderRequestEvent{AccountID: a.ID, Action: trading.ActionPlace, Order: &trading.OrderRequest{Pair: "EUR_USD",
		Side: "buy", Units: decimal.NewFromInt(1000), Type: "limit", Price: tradingPtr(decimal.RequireFromString("0.50000")), ClientOrderID: "ce-2"}}
	resp := st.orderRequestEvent(t, a.Token, "ce-place-2", pend, true)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("pending order event: %d", resp.StatusCode)
	}
	resp = st.orderRequestEvent(t, a.Token, "ce-cancel-2", trading.OrderRequestEvent{AccountID: a.ID, Action: trading.ActionCancel, OrderID: "@ce-2"}, false)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"cancelled"`) {
		t.Fatalf("cancel event: %d %s", resp.StatusCode, body)
	}
	resp = st.orderRequestEvent(t, a.Token, "ce-bad", trading.OrderRequestEvent{AccountID: a.ID, Action: "explode"}, false)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || tradingProblemCode(body) != "invalid_order_request" {
		t.Fatalf("bad action: %d %s", resp.StatusCode, body)
	}
	// The dev mount of the Service root takes the same events.
	raw, _ := json.Marshal(place)
	h := http.Header{"Content-Type": {"application/json"}, "Ce-Specversion": {"1.0"}, "Ce-Id": {"ce-root-1"},
		"Ce-Source": {"/test/producer"}, "Ce-Type": {trading.TypeOrderRequest}}
	if status, body := st.do(t, http.MethodPost, "/_svc/trading/", a.Token, raw, h); status != http.StatusCreated {
		t.Fatalf("event at the Service root: %d %s", status, body)
	}
	st.checkBooks(t)
}

func tradingPtr[T any](v T) *T { return &v }

// Size of one round of BenchmarkMarketOrdersREST.
const (
	benchAccounts    = 32
	benchRoundOrders = 2_000
)

// BenchmarkMarketOrdersREST measures market orders end to end through the REST API (trading,
// kawase.commands, the ordered dispatcher, the ledger's transaction, the outbox, kawase.order.results
// and the synchronous answer) with benchAccounts accounts trading concurrently: orders/s and p50/p99
// latency. One iteration is benchRoundOrders orders; the stack is built once.
func BenchmarkMarketOrdersREST(b *testing.B) {
	st := startTradingStack(b)
	var res trading.LoadResult
	for b.Loop() {
		var err error
		res, err = trading.Load(context.Background(), trading.LoadConfig{URL: st.url, AdminToken: tradingTestAdmin,
			Accounts: benchAccounts, Orders: benchRoundOrders})
		if err != nil {
			b.Fatal(err)
		}
		if res.Errors > 0 {
			b.Fatalf("%d errors: %v", res.Errors, res.ErrorSamples)
		}
	}
	b.ReportMetric(res.OrdersPerSecond, "orders/s")
	b.ReportMetric(float64(res.P50.Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(res.P99.Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(res.Pending), "answered_202")
}

// TestTradingCLI drives `kawase account …` and `kawase order …` against the stack.
func TestTradingCLI(t *testing.T) {
	st := startTradingStack(t)
	ctx := context.Background()
	run := func(token, noun string, args ...string) []byte {
		t.Helper()
		var out bytes.Buffer
		if err := tradingCLI(ctx, &out, t.TempDir(), apiTarget{URL: st.url, Token: token}, noun, args); err != nil {
			t.Fatalf("%s %v: %v", noun, args, err)
		}
		return out.Bytes()
	}
	var a trading.NewAccountView
	if err := json.Unmarshal(run(tradingTestAdmin, "account", "create", "--currency", "USD", "--deposit", "25000"), &a); err != nil || a.Token == "" {
		t.Fatalf("account create: %v %+v", err, a)
	}
	var o trading.OrderView
	out := run(a.Token, "order", "place", a.ID, "--pair", "EUR_USD", "--side", "buy", "--units", "1000", "--type", "limit",
		"--price", "1.00000", "--client-id", "cli-1", "--key", "cli-key")
	if err := json.Unmarshal(bytes.TrimSuffix(out, []byte("\n")), &o); err != nil || o.Status != "pending" {
		t.Fatalf("order place: %v %s", err, out)
	}
	if out := run(a.Token, "order", "list", a.ID, "--status", "pending"); !strings.Contains(string(out), o.ID) {
		t.Fatalf("order list: %s", out)
	}
	if out := run(a.Token, "order", "cancel", a.ID, "@cli-1"); !strings.Contains(string(out), `"cancelled"`) {
		t.Fatalf("order cancel: %s", out)
	}
	if out := run(a.Token, "account", "show", a.ID); !strings.Contains(string(out), `"balance": "25000.00"`) {
		t.Fatalf("account show: %s", out)
	}
	if out := run(a.Token, "account", "transactions", a.ID, "--page-size", "2"); !strings.Contains(string(out), `"next"`) {
		t.Fatalf("account transactions: %s", out)
	}
	var buf bytes.Buffer
	err := tradingCLI(ctx, &buf, t.TempDir(), apiTarget{URL: st.url, Token: a.Token}, "order", []string{"cancel", a.ID, o.ID})
	if err == nil || !strings.Contains(err.Error(), "order_not_pending") {
		t.Fatalf("cancel again: %v", err)
	}
	if err := tradingCLI(ctx, &buf, t.TempDir(), apiTarget{URL: st.url, Token: a.Token}, "order", []string{"show"}); !errors.Is(err, errUsage) {
		t.Fatalf("missing argument: %v", err)
	}
}

// TestTradingPricesFromTheRatesService trades on prices that travel the real way: kawase.rate.v1
// events on kawase.rates, the rates service tailing them, its WatchRates gRPC stream, the ledger's
// quote book. A market order fills at the published ask, and at the new one after the price moves.
func TestTradingPricesFromTheRatesService(t *testing.T) {
	st := startTradingStackWith(t, true)
	a := st.openAccount(t, "JPY", "10000000")
	for _, px := range [][2]string{{"151.000", "151.010"}, {"149.500", "149.520"}} {
		st.refreshQuotes(map[fx.Pair][2]string{"USD_JPY": px})
		var o trading.OrderView
		waitTrading(t, "a fill at the ask "+px[1], func() bool {
			status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token,
				map[string]string{"pair": "USD_JPY", "side": "buy", "units": "100"}, nil)
			return status == http.StatusCreated && json.Unmarshal(body, &o) == nil && o.Execution != nil && o.Execution.Price == px[1]
		})
	}
	st.checkBooks(t)
}

// TestSubmittedOrderReadAndCancelledBeforeTheLedgerApplies: while the ledger is held back, an order
// answers 202 with its URL; that URL answers at once (status submitted), by id and by client order
// id, and a cancel is accepted (202) and applied after the placement once the ledger resumes.
func TestSubmittedOrderReadAndCancelledBeforeTheLedgerApplies(t *testing.T) {
	st := startTradingStack(t)
	a := st.openAccount(t, "JPY", "1000000")
	st.disp.Held.Store(true)
	status, body := st.do(t, http.MethodPost, "/v1/accounts/"+a.ID+"/orders", a.Token,
		map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1000", "type": "limit", "price": "100.000",
			"clientOrderId": "held-1"}, http.Header{"Idempotency-Key": {"held-1"}})
	var placed trading.OrderView
	if status != http.StatusAccepted || json.Unmarshal(body, &placed) != nil || placed.Status != trading.StatusSubmitted {
		t.Fatalf("placement while the ledger is held: %d %s", status, body)
	}
	for _, ref := range []string{placed.ID, "@held-1"} {
		var got trading.OrderView
		if status, body := st.do(t, http.MethodGet, "/v1/accounts/"+a.ID+"/orders/"+ref, a.Token, nil, nil); status != http.StatusOK ||
			json.Unmarshal(body, &got) != nil || got.ID != placed.ID || got.Status != trading.StatusSubmitted || got.Price != "100.000" {
			t.Fatalf("GET %s of a submitted order: %d %s", ref, status, body)
		}
	}
	if status, body := st.do(t, http.MethodDelete, "/v1/accounts/"+a.ID+"/orders/"+placed.ID, a.Token, nil, nil); status != http.StatusAccepted {
		t.Fatalf("cancel of a submitted order: %d %s", status, body)
	}
	st.disp.Held.Store(false)
	waitTrading(t, "the placement, then the cancel, applied", func() bool {
		var got trading.OrderView
		status, body := st.do(t, http.MethodGet, "/v1/accounts/"+a.ID+"/orders/"+placed.ID, a.Token, nil, nil)
		return status == http.StatusOK && json.Unmarshal(body, &got) == nil && got.Status == "cancelled"
	})
}

// TestDecidedPlacementIsAnsweredAsStored: the 201 answer to a placement is built from the ledger's
// result, not read back; for every kind of outcome it must be byte for byte what GET answers next.
func TestDecidedPlacementIsAnsweredAsStored(t *testing.T) {
	st := startTradingStack(t)
	st.waitTradeable(t)
	a := st.openAccount(t, "USD", "10000")
	path := "/v1/accounts/" + a.ID + "/orders"
	goodTill := time.Now().Add(time.Hour).UTC().Format("2006-01-02T15:04:05.123456789Z07:00")
	before := st.counter(t, "kawase_trading_decided_order_reads_total")
	for _, c := range []struct {
		name   string
		req    map[string]string
		status string
	}{
		{"market buy", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "10000", "clientOrderId": "p-1",
			"priceBound": "999.000"}, "filled"},
		{"market sell realizing a loss in USD", map[string]string{"pair": "USD_JPY", "side": "sell", "units": "4000"}, "filled"},
		{"cross pair fill", map[string]string{"pair": "EUR_JPY", "side": "buy", "units": "1000", "timeInForce": "IOC"}, "filled"},
		{"beyond margin", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "10000000"}, "rejected"},
		{"beyond the price bound", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1000", "priceBound": "1.000"}, "rejected"},
		{"pending GTD limit", map[string]string{"pair": "USD_JPY", "side": "buy", "units": "1000", "type": "limit",
			"price": "100.000", "timeInForce": "GTD", "goodTill": goodTill, "clientOrderId": "lim-9"}, "pending"},
		{"duplicate client order id", map[string]string{"pair": "USD_JPY", "side": "sell", "units": "1000", "type": "stop",
			"price": "90.000", "clientOrderId": "lim-9"}, "rejected"},
	} {
		status, placed := st.do(t, http.MethodPost, path, a.Token, c.req, nil)
		var o trading.OrderView
		if status != http.StatusCreated || json.Unmarshal(placed, &o) != nil || o.Status != c.status {
			t.Fatalf("%s: %d %s, want 201 %s", c.name, status, placed, c.status)
		}
		status, got := st.do(t, http.MethodGet, path+"/"+o.ID, a.Token, nil, nil)
		if status != http.StatusOK || !bytes.Equal(placed, got) {
			t.Errorf("%s: answered\n%s\nbut GET answers %d\n%s", c.name, placed, status, got)
		}
	}
	if after := st.counter(t, "kawase_trading_decided_order_reads_total"); after != before {
		t.Errorf("%v decided placements were read back from the ledger instead of answered from their result", after-before)
	}
}

// counter is the value of a counter in the stack's registry.
func (st *tradingStack) counter(tb testing.TB, name string) float64 {
	tb.Helper()
	families, err := st.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			var sum float64
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// TestTradingCLIKeysEveryPost: a POST given no --key still carries an Idempotency-Key of its own, and
// when its outcome is unknown (a 503 here) the error names the key to retry with; a page size that is
// not positive is a usage error, not silently dropped.
func TestTradingCLIKeysEveryPost(t *testing.T) {
	keys := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys <- r.Header.Get("Idempotency-Key")
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"title":"unavailable","detail":"try again","code":"ledger_unavailable","status":503}`))
	}))
	defer srv.Close()
	var out bytes.Buffer
	err := tradingCLI(context.Background(), &out, t.TempDir(), apiTarget{URL: srv.URL, Token: "t"}, "order",
		[]string{"place", "acct-1", "--pair", "USD_JPY", "--side", "buy", "--units", "1000"})
	key := <-keys
	if !strings.HasPrefix(key, "cli-") || err == nil || !strings.Contains(err.Error(), "--key "+key) {
		t.Fatalf("key %q, error %v", key, err)
	}
	err = tradingCLI(context.Background(), &out, t.TempDir(), apiTarget{URL: srv.URL, Token: "t"}, "account",
		[]string{"transactions", "acct-1", "--page-size", "0"})
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "--page-size") {
		t.Fatalf("--page-size 0: %v", err)
	}
}
