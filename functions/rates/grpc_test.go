package rates_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/functions/rates"
	"github.com/kawase-fx/kawase/functions/rates/client"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// serveGRPC serves register's services on a real loopback listener and returns a client connection.
func serveGRPC(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	register(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestGRPCRateService calls GetRates and WatchRates over a real listener.
func TestGRPCRateService(t *testing.T) {
	env := startRates(t, rates.Config{Pairs: apiPairs, ConflateInterval: 50 * time.Millisecond}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 1, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	rc := ratesv1.NewRateServiceClient(serveGRPC(t, env.svc.RegisterGRPC))
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	all, err := rc.GetRates(ctx, &ratesv1.GetRatesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	mustf(t, len(all.Rates) == len(apiPairs), "GetRates returned %d rates", len(all.Rates))
	r := all.Rates[0]
	mustf(t, r.Pair == "USD_JPY" && r.Bid == "151.421" && r.Ask == "151.423" && r.Spread == "0.002" && r.Tradeable &&
		r.QuoteId == "1" && r.Time.AsTime().Equal(quote("USD_JPY", 1, 1).ProviderTime), "GetRates USD_JPY: %v", r)
	some, err := rc.GetRates(ctx, &ratesv1.GetRatesRequest{Pairs: []string{"EUR_USD"}})
	mustf(t, err == nil && len(some.Rates) == 1 && some.Rates[0].Pair == "EUR_USD", "GetRates EUR_USD: %v %v", some, err)
	if _, err := rc.GetRates(ctx, &ratesv1.GetRatesRequest{Pairs: []string{"NOPE"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetRates of an unknown pair: %v", err)
	}
	// The list is parsed joined with commas: an element that is empty or holds a comma is refused, not
	// read as "every pair" or as two pairs.
	for _, pairs := range [][]string{{""}, {" "}, {"USD_JPY", ""}, {"USD_JPY,EUR_USD"}, {"EUR_USD", ",USD_JPY"}} {
		if _, err := rc.GetRates(ctx, &ratesv1.GetRatesRequest{Pairs: pairs}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("GetRates %q: %v, want INVALID_ARGUMENT", pairs, err)
		}
		w, err := rc.WatchRates(ctx, &ratesv1.WatchRatesRequest{Pairs: pairs})
		if err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("WatchRates %q: %v, want INVALID_ARGUMENT", pairs, err)
		}
	}

	watch, err := rc.WatchRates(ctx, &ratesv1.WatchRatesRequest{Pairs: []string{"GBP_JPY"}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	mustf(t, err == nil && first.Snapshot && len(first.Rates) == 1 && first.Rates[0].Pair == "GBP_JPY", "first: %v %v", first, err)
	env.publish(t, quote("USD_JPY", 2, 1), quote("GBP_JPY", 2, 1))
	env.publish(t, quote("GBP_JPY", 3, 1))
	for {
		msg, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		mustf(t, !msg.Snapshot && len(msg.Rates) == 1 && msg.Rates[0].Pair == "GBP_JPY", "update: %v", msg)
		if msg.Rates[0].Bid == "191.973" {
			break
		}
	}
	if w, err := rc.WatchRates(ctx, &ratesv1.WatchRatesRequest{Pairs: []string{"USD_JPY", "USD_JPY"}}); err == nil {
		if _, err := w.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("WatchRates with a pair twice: %v", err)
		}
	}
}

// candleStub stands in for the ratekeeper's CandleService (the real one is tested in its package;
// this package may not import it).
type candleStub struct {
	ratesv1.UnimplementedCandleServiceServer
	fail codes.Code
	got  *ratesv1.GetCandlesRequest
}

func (c *candleStub) GetCandles(_ context.Context, req *ratesv1.GetCandlesRequest) (*ratesv1.GetCandlesResponse, error) {
	c.got = req
	if c.fail != codes.OK {
		return nil, status.Error(c.fail, "stub failure")
	}
	t0 := time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)
	return &ratesv1.GetCandlesResponse{Pair: req.Pair, Granularity: req.Granularity, Candles: []*ratesv1.Candle{
		{Time: timestamppb.New(t0), Bid: &ratesv1.OHLC{Open: "151.420", High: "151.480", Low: "151.400", Close: "151.450"},
			Ask: &ratesv1.OHLC{Open: "151.423", High: "151.483", Low: "151.403", Close: "151.453"}, Volume: 1200, Complete: true},
	}}, nil
}

// TestCandlesProxied serves GET /v1/rates/{pair}/candles through a CandleService over a real gRPC
// listener, and maps its errors and bad queries to problem+json.
func TestCandlesProxied(t *testing.T) {
	stub := &candleStub{}
	conn := serveGRPC(t, func(s *grpc.Server) { ratesv1.RegisterCandleServiceServer(s, stub) })
	env := startRates(t, rates.Config{Pairs: apiPairs}, ratesv1.NewCandleServiceClient(conn))
	r := get(t, env.srv.URL+"/v1/rates/usd_jpy/candles?granularity=M5&count=7")
	mustf(t, r.status == http.StatusOK, "candles: %d %s", r.status, r.body)
	mustf(t, stub.got.Pair == "USD_JPY" && stub.got.Granularity == ratesv1.Granularity_GRANULARITY_M5 && stub.got.Count == 7,
		"the ratekeeper was asked %v", stub.got)
	var body struct {
		Pair, Granularity string
		Candles           []struct {
			Time     string
			Bid, Ask struct{ O, H, L, C string }
			Volume   int64
			Complete bool
		}
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil {
		t.Fatal(err)
	}
	c := body.Candles[0]
	mustf(t, body.Pair == "USD_JPY" && body.Granularity == "M5" && len(body.Candles) == 1 && c.Time == "2026-01-05T09:00:00.000Z" &&
		c.Bid.O == "151.420" && c.Bid.H == "151.480" && c.Ask.C == "151.453" && c.Volume == 1200 && c.Complete, "candles body %s", r.body)
	mustf(t, get(t, env.srv.URL+"/v1/rates/USD_JPY/candles?granularity=M5&count=7", "If-None-Match", r.header.Get("Etag")).status ==
		http.StatusNotModified, "candles revalidation")
	mustf(t, get(t, env.srv.URL+"/v1/rates/USD_JPY/candles?granularity=M5&count=7&_=1", "If-None-Match", r.header.Get("Etag")).status ==
		http.StatusNotModified, "a cache-buster parameter was refused")
	if d := get(t, env.srv.URL+"/v1/rates/USD_JPY/candles?granularity=H1"); d.status != 200 || stub.got.Count != 100 {
		t.Fatalf("default count: %d, asked for %d", d.status, stub.got.Count)
	}
	for _, c := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/rates/USD_JPY/candles", 400, "invalid_granularity"},
		{"/v1/rates/USD_JPY/candles?granularity=D", 400, "invalid_granularity"},
		{"/v1/rates/USD_JPY/candles?granularity=M1&count=0", 400, "invalid_count"},
		{"/v1/rates/USD_JPY/candles?granularity=M1&count=5001", 400, "invalid_count"},
		{"/v1/rates/USD_JPY/candles?granularity=M1&count=ten", 400, "invalid_count"},
		{"/v1/rates/USD_JPY/candles?granularity=M1&granularity=H1", 400, "invalid_granularity"},
		{"/v1/rates/USD_JPY/candles?granularity=M1&granularity=M1", 400, "invalid_granularity"},
		{"/v1/rates/USD_JPY/candles?granularity=M1&count=5&count=6", 400, "invalid_count"},
		{"/v1/rates/NOPE/candles?granularity=M1", 404, "unknown_pair"},
	} {
		if r := get(t, env.srv.URL+c.path); r.status != c.status || problemCode(r) != c.code {
			t.Errorf("GET %s: %d %s, want %d %s", c.path, r.status, r.body, c.status, c.code)
		}
	}
	stub.fail = codes.Unavailable
	if r := get(t, env.srv.URL+"/v1/rates/USD_JPY/candles?granularity=M1"); r.status != 503 || problemCode(r) != "candles_unavailable" {
		t.Errorf("ratekeeper down: %d %s", r.status, r.body)
	}
	noCandles := startRates(t, rates.Config{Pairs: apiPairs}, nil)
	if r := get(t, noCandles.srv.URL+"/v1/rates/USD_JPY/candles?granularity=M1"); r.status != 503 || problemCode(r) != "candles_unavailable" {
		t.Errorf("no candle source: %d %s", r.status, r.body)
	}
}

// TestGRPCSlowWatcherDropped opens a WatchRates stream that is never read, with flow-control windows
// fixed at 64 KiB, while every pair changes every interval: once the server's send blocks, the
// stream must still be dropped (bounded backlog), counted and its slot freed, its handler must return
// although the client still reads nothing, and the client, when it reads again, gets what was sent and
// then RESOURCE_EXHAUSTED.
func TestGRPCSlowWatcherDropped(t *testing.T) {
	env := startRates(t, rates.Config{ConflateInterval: 10 * time.Millisecond}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go env.moveEveryPair(ctx, 10*time.Millisecond)
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// handlerDone reports when WatchRates returns, which a handler stuck in a blocked Send never does.
	handlerDone := make(chan error, 1)
	gs := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		err := h(srv, ss)
		handlerDone <- err
		return err
	}))
	env.svc.RegisterGRPC(gs)
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()
	const windowBytes = 64 << 10 // a fixed window turns off the client's BDP-driven growth
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(windowBytes), grpc.WithInitialConnWindowSize(windowBytes))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := ratesv1.NewRateServiceClient(conn).WatchRates(ctx, &ratesv1.WatchRatesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the unread watcher dropped", func() bool {
		return metricValue(t, env.reg, "kawase_rates_stream_dropped_total", nil) == 1
	})
	eventually(t, "its slot freed", func() bool {
		return metricValue(t, env.reg, "kawase_rates_stream_clients", nil) == 0
	})
	select {
	case err := <-handlerDone:
		mustf(t, status.Code(err) == codes.ResourceExhausted, "WatchRates returned %v, want RESOURCE_EXHAUSTED", err)
	case <-time.After(testTimeout):
		t.Fatal("WatchRates did not return while its client was not reading")
	}
	n := 0
	for {
		_, err := watch.Recv()
		if err != nil {
			mustf(t, status.Code(err) == codes.ResourceExhausted, "after %d messages: %v, want RESOURCE_EXHAUSTED", n, err)
			break
		}
		n++
	}
	mustf(t, n > 1, "only %d messages before the drop", n)
}

// TestStreamLimitsApart: SSE streams and WatchRates streams are limited apart, so neither kind can
// lock the other out: with the one SSE stream allowed taken, WatchRates is still served, and with the
// one WatchRates stream allowed taken, a new SSE stream is.
func TestStreamLimitsApart(t *testing.T) {
	env := startRates(t, rates.Config{Pairs: apiPairs, StreamClientsMax: 1, WatchClientsMax: 1}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 1, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	rc := ratesv1.NewRateServiceClient(serveGRPC(t, env.svc.RegisterGRPC))
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	url := client.StreamURL(env.srv.URL, nil)

	sseCtx, closeSSE := context.WithCancel(ctx)
	next(t, streamEvents(t, sseCtx, url), "snapshot")
	mustf(t, streamStatus(t, ctx, url) == "503 too_many_streams", "a second SSE stream was not refused")

	watch, err := rc.WatchRates(ctx, &ratesv1.WatchRatesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	mustf(t, err == nil && first.Snapshot, "WatchRates with the SSE limit reached: %v", err)
	extra, err := rc.WatchRates(ctx, &ratesv1.WatchRatesRequest{})
	if err == nil {
		_, err = extra.Recv()
	}
	mustf(t, status.Code(err) == codes.ResourceExhausted, "a second WatchRates: %v, want RESOURCE_EXHAUSTED", err)

	closeSSE()
	eventually(t, "the SSE stream released", func() bool {
		return metricValue(t, env.reg, "kawase_rates_stream_clients", nil) == 1
	})
	next(t, streamEvents(t, ctx, url), "snapshot")
}

// streamStatus opens a stream and returns its status and problem code ("503 too_many_streams"), or
// "200" for a stream served (closed at once).
func streamStatus(t *testing.T, ctx context.Context, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return "200"
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(resp.StatusCode) + " " + problemCode(response{status: resp.StatusCode, header: resp.Header, body: string(body)})
}
