package ledger_test

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

// queryClient serves the ledger's gRPC API on a loopback TCP port and returns a client of it.
func (e *env) queryClient(t *testing.T) ledgerv1.LedgerServiceClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	e.l.RegisterGRPC(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ledgerv1.NewLedgerServiceClient(conn)
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: %v, want %s", what, err, code)
	}
}

func TestQueryService(t *testing.T) {
	e := newEnv(t, testConfig())
	q := e.queryClient(t)
	ctx := context.Background()
	res, err := q.OpenAccount(ctx, &ledgerv1.OpenAccountRequest{AccountId: "A", Currency: "JPY", Deposit: "1000000"})
	if err != nil || !res.GetCreated() || res.GetAccount().GetBalance() != "1000000" || res.GetAccount().GetLastTransactionId() != 1 {
		t.Fatalf("open: %v %v", res, err)
	}
	res, err = q.OpenAccount(ctx, &ledgerv1.OpenAccountRequest{AccountId: "A", Currency: "JPY", Deposit: "1000000"})
	if err != nil || res.GetCreated() {
		t.Fatalf("reopen: %v %v", res, err)
	}
	_, err = q.OpenAccount(ctx, &ledgerv1.OpenAccountRequest{AccountId: "A", Currency: "USD", Deposit: "1"})
	wantCode(t, "reopen with other terms", err, codes.AlreadyExists)
	_, err = q.OpenAccount(ctx, &ledgerv1.OpenAccountRequest{AccountId: "Z", Currency: "EUR", Deposit: "1"})
	wantCode(t, "open in EUR", err, codes.InvalidArgument)
	e.open(t, "B", "USD", "5000")
	e.apply(t, market("A", "m1", "USD_JPY", "buy", "10000"))
	e.apply(t, market("A", "m2", "EUR_USD", "sell", "5000"))
	e.apply(t, market("A", "m3", "USD_JPY", "buy", "99000000"))
	lim := pending("A", "p1", "USD_JPY", "buy", "1000", "limit", "140.000")
	lim.Order.ClientOrderID = "mine"
	e.apply(t, lim)
	e.apply(t, pending("A", "p2", "EUR_USD", "sell", "1000", "stop", "1.00000"))
	e.apply(t, pending("B", "p3", "EUR_USD", "buy", "1000", "limit", "1.00000"))

	a, err := q.GetAccount(ctx, &ledgerv1.GetAccountRequest{AccountId: "A"})
	if err != nil || a.GetMarginLevel() == "" || a.GetOpenPositions() != 2 || a.GetPendingOrders() != 2 || a.GetLastTransactionId() != 6 {
		t.Fatalf("account: %v %v", a, err)
	}
	for _, id := range []string{"nobody", "house:dealer"} {
		_, err = q.GetAccount(ctx, &ledgerv1.GetAccountRequest{AccountId: id})
		wantCode(t, "account "+id, err, codes.NotFound)
	}
	o, err := q.GetOrder(ctx, &ledgerv1.GetOrderRequest{AccountId: "A", Key: &ledgerv1.GetOrderRequest_ClientOrderId{ClientOrderId: "mine"}})
	if err != nil || o.GetId() != "p1" || o.GetStatus() != "pending" || o.GetPrice() != "140.000" {
		t.Fatalf("by client id: %v %v", o, err)
	}
	o, err = q.GetOrder(ctx, &ledgerv1.GetOrderRequest{AccountId: "A", Key: &ledgerv1.GetOrderRequest_OrderId{OrderId: "m1"}})
	if err != nil || o.GetExecution().GetAccountSeq() != 1 || o.GetExecution().GetPrice() != "150.010" {
		t.Fatalf("filled order: %v %v", o, err)
	}
	o, err = q.GetOrder(ctx, &ledgerv1.GetOrderRequest{AccountId: "A", Key: &ledgerv1.GetOrderRequest_OrderId{OrderId: "m3"}})
	if err != nil || o.GetStatus() != "rejected" || o.GetReason() != "insufficient_margin" {
		t.Fatalf("rejected order: %v %v", o, err)
	}
	_, err = q.GetOrder(ctx, &ledgerv1.GetOrderRequest{AccountId: "A", Key: &ledgerv1.GetOrderRequest_OrderId{OrderId: "p3"}})
	wantCode(t, "another account's order", err, codes.NotFound)

	var seen []string
	for from := int64(0); ; {
		page, err := q.ListOrders(ctx, &ledgerv1.ListOrdersRequest{AccountId: "A", From: from, PageSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.GetOrders() {
			seen = append(seen, o.GetId())
		}
		if from = page.GetNextFrom(); from == 0 {
			break
		}
	}
	if len(seen) != 5 || seen[0] != "m1" || seen[4] != "p2" {
		t.Fatalf("orders paged: %v", seen)
	}
	pend, err := q.ListOrders(ctx, &ledgerv1.ListOrdersRequest{AccountId: "A", Status: "pending"})
	if err != nil || len(pend.GetOrders()) != 2 {
		t.Fatalf("pending orders: %v %v", pend, err)
	}
	_, err = q.ListOrders(ctx, &ledgerv1.ListOrdersRequest{AccountId: "A", PageSize: 1001})
	wantCode(t, "page size 1001", err, codes.InvalidArgument)
	_, err = q.ListOrders(ctx, &ledgerv1.ListOrdersRequest{AccountId: "nobody"})
	wantCode(t, "orders of nobody", err, codes.NotFound)

	trades, err := q.ListTrades(ctx, &ledgerv1.ListTradesRequest{AccountId: "A", PageSize: 1})
	if err != nil || len(trades.GetTrades()) != 1 || trades.GetNextFrom() != 2 {
		t.Fatalf("trades: %v %v", trades, err)
	}
	pos, err := q.ListPositions(ctx, &ledgerv1.ListPositionsRequest{AccountId: "A"})
	if err != nil || len(pos.GetPositions()) != 2 || pos.GetPositions()[0].GetPair() != "EUR_USD" || pos.GetPositions()[0].GetSide() != "short" {
		t.Fatalf("positions: %v %v", pos, err)
	}
	txs, err := q.ListTransactions(ctx, &ledgerv1.ListTransactionsRequest{AccountId: "A", From: 2, PageSize: 3})
	if err != nil || len(txs.GetTransactions()) != 3 || txs.GetTransactions()[0].GetId() != 2 || txs.GetNextFrom() != 5 ||
		txs.GetLastTransactionId() != 6 || txs.GetTransactions()[2].GetType() != "order_reject" {
		t.Fatalf("transactions: %v %v", txs, err)
	}
	book, err := q.ListPendingOrders(ctx, &ledgerv1.ListPendingOrdersRequest{PageSize: 2})
	if err != nil || len(book.GetOrders()) != 2 || book.GetNextAfter() != "p2" {
		t.Fatalf("book: %v %v", book, err)
	}
	book, err = q.ListPendingOrders(ctx, &ledgerv1.ListPendingOrdersRequest{After: book.GetNextAfter(), PageSize: 2})
	if err != nil || len(book.GetOrders()) != 1 || book.GetOrders()[0].GetId() != "p3" || book.GetNextAfter() != "" {
		t.Fatalf("book page 2: %v %v", book, err)
	}
	book, err = q.ListPendingOrders(ctx, &ledgerv1.ListPendingOrdersRequest{Pair: "USD_JPY"})
	if err != nil || len(book.GetOrders()) != 1 {
		t.Fatalf("book of USD_JPY: %v %v", book, err)
	}
}
