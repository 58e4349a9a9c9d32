package ledger_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/functions/ledger"
	"github.com/kawase-fx/kawase/functions/ledger/ledgertest"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// running starts the ledger's background work and an ordered dispatcher from kawase.commands to its
// handler, until the test ends.
func (e *env) running(t *testing.T) *ledgertest.Dispatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	disp := &ledgertest.Dispatcher{Brokers: e.brokers, Topic: eventing.TopicCommands, Group: "ledger", URL: e.srv.URL + "/"}
	go func() { _ = e.l.Run(ctx); done <- struct{}{} }()
	go func() { _ = disp.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	return disp
}

// followOverGRPC feeds the ledger's book from src through a real RateService gRPC stream.
func (e *env) followOverGRPC(t *testing.T, src *ledger.QuoteBook) {
	t.Helper()
	addr, stop, err := ledgertest.ServeRates(src)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = ledger.FollowRates(ctx, ratesv1.NewRateServiceClient(conn), e.book, zapNop())
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close(); stop() })
}

func zapNop() *zap.SugaredLogger { return zap.NewNop().Sugar() }

// counter is the value of the counter name with the label label=value in the ledger's metrics (0
// when it has not counted yet).
func (e *env) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	v, err := metrictest.Value(e.reg, name, map[string]string{label: value})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (e *env) bookReads(t *testing.T, kind string) float64 {
	return e.counter(t, "kawase_ledger_watcher_book_reads_total", "kind", kind)
}

// eventually polls cond until it holds or the test times out.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) orderStatus(t *testing.T, id string) string {
	t.Helper()
	var s string
	if err := e.pool.QueryRow(context.Background(), `SELECT status FROM ledger.orders WHERE id = $1`, id).Scan(&s); err != nil {
		return ""
	}
	return s
}

func (e *env) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestWatcherTriggersExpiresAndClosesOut drives pending orders and margin through prices that arrive
// over a real gRPC stream: the watcher's commands travel through kawase.commands and the ordered
// dispatcher like every other command, a trigger seen twice fills once, GTD orders expire, and an
// account below 50% margin is closed out at market.
func TestWatcherTriggersExpiresAndClosesOut(t *testing.T) {
	e := newEnv(t, testConfig())
	src := ledger.NewQuoteBook()
	setQuotes(src)
	src.Set(ledger.Quote{Pair: "USD_JPY", Bid: d("150.000"), Ask: d("150.010"), Time: time.Now().UTC(), Tradeable: true, QuoteID: "grpc"})
	e.followOverGRPC(t, src)
	eventually(t, "quotes over gRPC", func() bool { q, _ := e.book.Quote("USD_JPY"); return q.QuoteID == "grpc" })
	e.running(t)
	// Everything below reaches the watcher through the change log: it read the whole book, empty,
	// before, and reads it whole again only after BookReload (an hour).
	eventually(t, "the watcher's first read", func() bool { return e.bookReads(t, "full") == 1 })
	e.open(t, "A", "JPY", "1000000")
	e.open(t, "C", "JPY", "100000")
	if r := e.apply(t, pending("A", "L1", "USD_JPY", "buy", "1000", "limit", "149.500")); r.Status != eventing.ResultAccepted {
		t.Fatalf("limit = %+v", r)
	}
	gtd := pending("A", "G1", "USD_JPY", "sell", "1000", "limit", "155.000")
	till := time.Now().Add(300 * time.Millisecond)
	gtd.Order.TimeInForce, gtd.Order.GoodTill = eventing.TimeInForceGTD, &till
	e.apply(t, gtd)
	if r := e.apply(t, market("C", "c1", "USD_JPY", "buy", "16000")); r.Status != eventing.ResultFilled {
		t.Fatalf("c1 = %+v", r)
	}
	eventually(t, "GTD expiry", func() bool { return e.orderStatus(t, "G1") == ledger.StatusExpired })
	if s := e.orderStatus(t, "L1"); s != ledger.StatusPending {
		t.Fatalf("L1 = %s before the price crossed", s)
	}
	// USD_JPY falls through the limit and far enough to put C below 50% margin.
	setQuote(src, "USD_JPY", "146.000", "146.010")
	eventually(t, "limit fill", func() bool { return e.orderStatus(t, "L1") == ledger.StatusFilled })
	eventually(t, "close-out", func() bool {
		return e.count(t, `SELECT count(*) FROM ledger.positions WHERE account_id = 'C'`) == 0
	})
	var price string
	if err := e.pool.QueryRow(context.Background(), `SELECT price::text FROM ledger.executions WHERE order_id = 'L1'`).Scan(&price); err != nil || !d(price).Equal(d("146.010")) {
		t.Fatalf("L1 filled at %s (%v), want the ask 146.010 (better than the limit)", price, err)
	}
	if n := e.count(t, `SELECT count(*) FROM ledger.executions WHERE account_id = 'C' AND reason = 'closeout'`); n != 1 {
		t.Fatalf("close-out executions = %d", n)
	}
	if n := e.count(t, `SELECT count(*) FROM ledger.transactions WHERE account_id = 'C' AND type = 'closeout_fill'`); n != 1 {
		t.Fatalf("close-out transactions = %d", n)
	}
	// The same trigger again, through the topic: one fill still.
	w := cekafka.NewWriter(e.brokers, eventing.TopicCommands)
	defer w.Close()
	again := &eventing.OrderCommandV1{CommandID: "trigger:L1", Kind: eventing.CommandTrigger, AccountID: "A", OrderID: "L1",
		RequestedAt: time.Now().UTC()}
	ev, _ := eventing.NewEventFrom(eventing.TypeOrderCommand, eventing.SourceRatekeeper, again.CommandID, again)
	marker := market("A", "m1", "USD_JPY", "sell", "1")
	mev, _ := eventing.NewEvent(eventing.TypeOrderCommand, marker.CommandID, marker)
	if err := cekafka.Publish(context.Background(), w, ev, mev); err != nil {
		t.Fatal(err)
	}
	eventually(t, "marker after the repeated trigger", func() bool { return e.orderStatus(t, "m1") == ledger.StatusFilled })
	if n := e.count(t, `SELECT count(*) FROM ledger.executions WHERE order_id = 'L1'`); n != 1 {
		t.Fatalf("L1 executions = %d after a repeated trigger", n)
	}
	eventually(t, "outbox drained", func() bool { return e.count(t, `SELECT count(*) FROM ledger.outbox`) == 0 })
	checkBooks(t, e.pool)
	if full, changes := e.bookReads(t, "full"), e.bookReads(t, "changes"); full != 1 || changes == 0 {
		t.Fatalf("the watcher read the whole book %v times and the changes %v times, want once and many", full, changes)
	}
}
