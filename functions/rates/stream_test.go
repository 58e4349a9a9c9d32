package rates_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/rates"
	"github.com/kawase-fx/kawase/functions/rates/client"
)

// streamEvents collects a stream's events on a channel.
func streamEvents(t *testing.T, ctx context.Context, url string) <-chan client.Event {
	return streamEventsWith(t, ctx, http.DefaultClient, url)
}

// h2cClient speaks only HTTP/2 without TLS, as a gRPC-style internal client in the cluster would.
func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// streamEventsWith collects a stream's events, read with hc, on a channel.
func streamEventsWith(t *testing.T, ctx context.Context, hc *http.Client, url string) <-chan client.Event {
	t.Helper()
	ch := make(chan client.Event, 1024)
	go func() {
		defer close(ch)
		_ = client.Stream(ctx, hc, url, func(e client.Event) error {
			select {
			case ch <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return ch
}

func next(t *testing.T, ch <-chan client.Event, name string) client.Event {
	t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended waiting for %s", name)
			}
			if e.Name == name {
				return e
			}
		case <-timeout:
			t.Fatalf("timed out waiting for a %s event", name)
		}
	}
}

// TestSSEStream: a snapshot of the requested pairs first, then updates of only those pairs,
// conflated to at most one per pair per interval and ending at the newest rate, and heartbeats; over
// HTTP/1.1, where the server writes the stream on the connection itself, and over HTTP/2 (h2c),
// where it streams through net/http.
func TestSSEStream(t *testing.T) {
	t.Run("http1", func(t *testing.T) {
		testSSEStream(t, http.DefaultClient, func(resp *http.Response) bool {
			// Written on the connection: no chunking, the body ends when the connection closes.
			return resp.ProtoMajor == 1 && resp.Close && len(resp.TransferEncoding) == 0 && resp.ContentLength == -1
		})
	})
	t.Run("h2c", func(t *testing.T) {
		testSSEStream(t, h2cClient(), func(resp *http.Response) bool { return resp.ProtoMajor == 2 })
	})
}

func testSSEStream(t *testing.T, hc *http.Client, framing func(*http.Response) bool) {
	const interval = 200 * time.Millisecond
	env := startRates(t, rates.Config{Pairs: apiPairs, ConflateInterval: interval, HeartbeatInterval: 300 * time.Millisecond}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 1, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	url := client.StreamURL(env.srv.URL, []fx.Pair{"USD_JPY", "EUR_USD"})
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mustf(t, resp.Header.Get("Cache-Control") == "no-store, no-transform", "stream cache control %q", resp.Header.Get("Cache-Control"))
	mustf(t, resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "text/event-stream" && framing(resp),
		"stream answered %s %s, %q, transfer encoding %v, close %v", resp.Proto, resp.Status, resp.Header.Get("Content-Type"),
		resp.TransferEncoding, resp.Close)
	head, err := http.Head(url)
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	mustf(t, head.StatusCode == http.StatusOK && head.Header.Get("Content-Type") == "text/event-stream", "HEAD: %s", head.Status)
	// A client that goes away is released, and HEAD holds no stream.
	eventually(t, "the closed stream released", func() bool {
		return metricValue(t, env.reg, "kawase_rates_stream_clients", nil) == 0
	})
	events := streamEventsWith(t, ctx, hc, url)

	snap := next(t, events, "snapshot")
	var s struct{ Rates []rateBody }
	if err := json.Unmarshal([]byte(snap.Data), &s); err != nil {
		t.Fatal(err)
	}
	mustf(t, len(s.Rates) == 2 && s.Rates[0].Pair == "USD_JPY" && s.Rates[0].Bid == "151.421" && s.Rates[1].Pair == "EUR_USD",
		"snapshot %s", snap.Data)

	// 40 USD_JPY quotes over about a second, and GBP_JPY quotes the client did not ask for.
	const burst = 40
	start := time.Now()
	for i := 2; i < 2+burst; i++ {
		env.publish(t, quote("USD_JPY", i, 1), quote("GBP_JPY", i, 1))
		time.Sleep(25 * time.Millisecond)
	}
	last := fmt.Sprintf("%.3f", 151.420+float64(burst+1)/1000)
	var updates []rateBody
	for len(updates) == 0 || updates[len(updates)-1].Bid != last {
		e := next(t, events, "rate")
		var r rateBody
		if err := json.Unmarshal([]byte(e.Data), &r); err != nil {
			t.Fatal(err)
		}
		mustf(t, r.Pair == "USD_JPY", "update for %s, which the client did not ask for", r.Pair)
		mustf(t, !e.Emitted.IsZero(), "update without its emitted time")
		updates = append(updates, r)
	}
	elapsed := time.Since(start)
	// At most one update per interval (plus the partial intervals at either end); never every quote.
	maxUpdates := int(elapsed/interval) + 2
	mustf(t, len(updates) <= maxUpdates && len(updates) < burst, "%d updates in %v, at most %d allowed", len(updates), elapsed, maxUpdates)
	for i := 1; i < len(updates); i++ {
		mustf(t, updates[i].Bid > updates[i-1].Bid, "update %d goes backwards: %s after %s", i, updates[i].Bid, updates[i-1].Bid)
	}
	hb := next(t, events, "heartbeat")
	var h struct{ Time string }
	mustf(t, json.Unmarshal([]byte(hb.Data), &h) == nil && h.Time != "", "heartbeat %q", hb.Data)
	t.Logf("%d quotes in %v reached the client as %d conflated updates", burst, elapsed.Round(time.Millisecond), len(updates))
}

// TestSSESlowClientDropped opens a stream with a tiny receive window and never reads it, while every
// pair changes every interval: the server must drop it (bounded backlog), count it, and keep serving
// a client that reads.
func TestSSESlowClientDropped(t *testing.T) {
	env := newRatesEnv(t, rates.Config{ConflateInterval: 10 * time.Millisecond}, nil)
	env.sendBuffer = 16 << 10
	env.start(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go env.moveEveryPair(ctx, 10*time.Millisecond)
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	good := streamEvents(t, ctx, client.StreamURL(env.srv.URL, nil))
	next(t, good, "snapshot")

	slow := dialSmallWindow(t, env.srv.Listener.Addr().String())
	defer slow.Close()
	fmt.Fprintf(slow, "GET /v1/rates/stream HTTP/1.1\r\nHost: rates\r\nAccept: text/event-stream\r\n\r\n")
	eventually(t, "the slow client dropped", func() bool {
		return metricValue(t, env.reg, "kawase_rates_stream_dropped_total", nil) == 1
	})
	eventually(t, "only the reading client left", func() bool {
		return metricValue(t, env.reg, "kawase_rates_stream_clients", nil) == 1
	})
	// The dropped stream is cut: reading it drains what was buffered, then the body ends (abruptly:
	// the blocked write was aborted).
	_ = slow.SetReadDeadline(time.Now().Add(testTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(slow), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	mustf(t, resp.StatusCode == http.StatusOK && (err == nil || errors.Is(err, io.ErrUnexpectedEOF)),
		"slow stream did not end after %d bytes: %v", n, err)
	next(t, good, "rate")
}

// dialSmallWindow connects with a receive buffer of a few KiB, set before the handshake so the TCP
// window stays small.
func dialSmallWindow(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// syncBuffer is a bytes.Buffer safe for one writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestWatchPrintsLiveRates runs what `kawase rates watch USD_JPY` runs: the snapshot line, then a
// line per update with the bid's direction; a refused pair list is an error, not a retry loop.
func TestWatchPrintsLiveRates(t *testing.T) {
	env := startRates(t, rates.Config{Pairs: apiPairs, ConflateInterval: 50 * time.Millisecond}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 5, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	ctx, cancel := context.WithCancel(t.Context())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- client.Watch(ctx, env.srv.URL, []fx.Pair{"USD_JPY"}, out) }()
	eventually(t, "the snapshot line", func() bool { return strings.Contains(out.String(), "151.425") })
	env.publish(t, quote("USD_JPY", 9, 1))
	eventually(t, "an up line", func() bool { return strings.Contains(out.String(), "151.429") })
	env.publish(t, quote("USD_JPY", 10, 1))
	env.publish(t, quote("USD_JPY", 4, 2)) // older: never shown
	env.publish(t, quote("USD_JPY", 11, 2))
	eventually(t, "the last line", func() bool { return strings.Contains(out.String(), "151.431") })
	cancel()
	mustf(t, <-done == nil, "watch did not end cleanly")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	mustf(t, strings.Contains(lines[0], "USD_JPY") && strings.Contains(lines[0], "151.425 / 151.427"), "first line %q", lines[0])
	for _, l := range lines[1:] {
		mustf(t, strings.Contains(l, "▲") && !strings.Contains(l, "EUR_USD"), "update line %q", l)
	}
	err := client.Watch(t.Context(), env.srv.URL, []fx.Pair{"EUR_GBP"}, out)
	mustf(t, errors.Is(err, client.ErrRefused), "watch of an unserved pair: %v", err)
}

// TestSSEClientsPublishedAtSpreadPhases: stream clients are published at different phases of the
// conflation interval, not all in one burst, and each still gets at most one update per interval.
func TestSSEClientsPublishedAtSpreadPhases(t *testing.T) {
	const (
		interval = 200 * time.Millisecond
		clients  = 10
		updates  = 4
	)
	env := startRates(t, rates.Config{Pairs: apiPairs, ConflateInterval: interval}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 1, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	url := client.StreamURL(env.srv.URL, []fx.Pair{"USD_JPY"})
	streams := make([]<-chan client.Event, clients)
	for i := range streams {
		streams[i] = streamEvents(t, ctx, url)
		next(t, streams[i], "snapshot")
	}
	wg.Go(func() {
		for i := 2; ctx.Err() == nil; i++ {
			_ = env.tryPublish(ctx, quote("USD_JPY", i%900+2, 1)) // a failure shows as missing updates
			time.Sleep(5 * time.Millisecond)
		}
	})
	phases := map[int64]bool{}
	for i, ch := range streams {
		var last time.Time
		for n := range updates {
			e := next(t, ch, "rate")
			if n > 0 {
				gap := e.Emitted.Sub(last)
				mustf(t, gap >= interval/2, "client %d: updates %v apart, the interval is %v", i, gap, interval)
			}
			last = e.Emitted
		}
		phases[last.UnixMilli()%interval.Milliseconds()/(interval.Milliseconds()/clients)] = true
	}
	mustf(t, len(phases) >= clients/2, "%d clients were published at only %d phases of the interval", clients, len(phases))
}
