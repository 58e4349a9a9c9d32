package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const testTimeout = 60 * time.Second

// syncBuffer is a strings.Builder safe for one writer and a polling reader.
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

// fastWatcher is Watch's watcher with short waits, so a test's retries take milliseconds.
func fastWatcher(idle time.Duration) *watcher {
	w := newWatcher()
	w.retryMin, w.retryMax, w.idleTimeout = time.Millisecond, 4*time.Millisecond, idle
	return w
}

// snapshotFrame is the SSE bytes of a snapshot holding one USD_JPY rate with bid.
func snapshotFrame(bid string) string {
	return fmt.Sprintf("retry: 1000\nevent: snapshot\ndata: {\"rates\":[{\"pair\":\"USD_JPY\",\"bid\":%q,\"ask\":\"151.500\","+
		"\"spread\":\"0.075\",\"time\":\"2026-01-05T09:00:01.000Z\",\"tradeable\":true}]}\n\n", bid)
}

// startStream answers with a 200 event stream and writes frame.
func startStream(w http.ResponseWriter, frame string) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, frame)
	http.NewResponseController(w).Flush()
}

// watchInBackground runs w against srv until the test ends, returning its output and its result.
func watchInBackground(t *testing.T, w *watcher, srv *httptest.Server) (*syncBuffer, context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	out := &syncBuffer{}
	done, stopped := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(stopped)
		done <- w.run(ctx, StreamURL(srv.URL, nil), out)
	}()
	t.Cleanup(func() { cancel(); <-stopped })
	return out, cancel, done
}

// waitFor polls until out holds want, failing if the watch ends first.
func waitFor(t *testing.T, out *syncBuffer, done <-chan error, want string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !strings.Contains(out.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("watch ended (%v) before printing %q; output:\n%s", err, want, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %q; output:\n%s", want, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchNeverGivesUp: a server that answers 503 many times in a row (more than the ten attempts the
// watch once gave up after) is retried until it serves the stream.
func TestWatchNeverGivesUp(t *testing.T) {
	const refusals = 25
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		n := requests
		mu.Unlock()
		if n <= refusals {
			http.Error(w, `{"code":"too_many_streams"}`, http.StatusServiceUnavailable)
			return
		}
		startStream(w, snapshotFrame("151.425"))
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close) // after the watch stops (cleanups run last first): a silent handler waits for its client
	out, cancel, done := watchInBackground(t, fastWatcher(testTimeout), srv)
	waitFor(t, out, done, "151.425")
	cancel()
	mustf(t, <-done == nil, "watch did not end cleanly when its context did")
	mustf(t, strings.Count(out.String(), "503 Service Unavailable") == refusals, "output:\n%s", out)
}

// TestWatchHonoursRetryAfter: after a 503 and a 429 that each say Retry-After: 1, the next request
// comes no sooner than a second later (the backoff alone would wait a few milliseconds), and a 429 is
// retried, not taken for a refusal.
func TestWatchHonoursRetryAfter(t *testing.T) {
	var (
		mu    sync.Mutex
		times []time.Time
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		switch n {
		case 1:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "rolling out", http.StatusServiceUnavailable)
		case 2:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		default:
			startStream(w, snapshotFrame("151.425"))
			<-r.Context().Done()
		}
	}))
	t.Cleanup(srv.Close) // after the watch stops (cleanups run last first): a silent handler waits for its client
	out, _, done := watchInBackground(t, fastWatcher(testTimeout), srv)
	waitFor(t, out, done, "151.425")
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < 3; i++ {
		gap := times[i].Sub(times[i-1])
		mustf(t, gap >= time.Second, "request %d came %v after a Retry-After: 1", i+1, gap)
	}
}

// TestWatchReconnectsWhenSilent: a stream that goes silent (a half-open connection: no event, no
// heartbeat, no end) is dropped after the idle timeout and replaced by a new one.
func TestWatchReconnectsWhenSilent(t *testing.T) {
	firstGone := make(chan struct{})
	var (
		mu    sync.Mutex
		conns int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		startStream(w, snapshotFrame(fmt.Sprintf("151.42%d", n)))
		<-r.Context().Done() // silent until the client hangs up
		if n == 1 {
			close(firstGone)
		}
	}))
	t.Cleanup(srv.Close) // after the watch stops (cleanups run last first): a silent handler waits for its client
	out, _, done := watchInBackground(t, fastWatcher(300*time.Millisecond), srv)
	waitFor(t, out, done, "151.421")
	waitFor(t, out, done, "151.422")
	mustf(t, strings.Contains(out.String(), errIdle.Error()), "the reconnection does not say why:\n%s", out)
	select {
	case <-firstGone:
	case <-time.After(testTimeout):
		t.Fatal("the silent connection was never closed")
	}
}

// TestWatchHeartbeatsKeepStreamAlive: heartbeats are events: a stream with nothing but heartbeats for
// longer than the idle timeout stays up.
func TestWatchHeartbeatsKeepStreamAlive(t *testing.T) {
	const (
		idle       = 2 * time.Second
		beatEvery  = 50 * time.Millisecond
		heartbeats = 60 // 3 s of heartbeats: longer than idle, each gap a fortieth of it
	)
	var (
		mu    sync.Mutex
		conns int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns++
		mu.Unlock()
		startStream(w, snapshotFrame("151.421"))
		rc := http.NewResponseController(w)
		for range heartbeats {
			time.Sleep(beatEvery)
			fmt.Fprint(w, "event: heartbeat\ndata: {\"time\":\"2026-01-05T09:00:02.000Z\"}\n\n")
			if rc.Flush() != nil {
				return
			}
		}
		fmt.Fprint(w, "event: rate\ndata: {\"pair\":\"USD_JPY\",\"bid\":\"151.429\",\"ask\":\"151.500\",\"spread\":\"0.071\","+
			"\"time\":\"2026-01-05T09:00:03.000Z\",\"tradeable\":true}\n\n")
		_ = rc.Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close) // after the watch stops (cleanups run last first): a silent handler waits for its client
	out, _, done := watchInBackground(t, fastWatcher(idle), srv)
	waitFor(t, out, done, "151.429")
	mu.Lock()
	defer mu.Unlock()
	mustf(t, conns == 1, "%d connections: heartbeats did not keep the stream alive; output:\n%s", conns, out)
}

// TestWatchRefusedIsAnError: a 4xx other than 429 ends the watch with ErrRefused after one request.
func TestWatchRefusedIsAnError(t *testing.T) {
	var (
		mu       sync.Mutex
		requests int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		requests++
		mu.Unlock()
		http.Error(w, `{"code":"invalid_pairs"}`, http.StatusBadRequest)
	}))
	t.Cleanup(srv.Close) // after the watch stops (cleanups run last first): a silent handler waits for its client
	err := fastWatcher(testTimeout).run(t.Context(), StreamURL(srv.URL, nil), &syncBuffer{})
	var se *StatusError
	mustf(t, errors.Is(err, ErrRefused) && errors.As(err, &se) && se.StatusCode == http.StatusBadRequest, "watch: %v", err)
	mu.Lock()
	defer mu.Unlock()
	mustf(t, requests == 1, "%d requests for a refused stream", requests)
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"1", time.Second},
		{" 7 ", 7 * time.Second},
		{"0", 0},
		{"-3", 0},
		{"soon", 0},
		{"86400", watchRetryAfterMaxMs * time.Millisecond},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		if got := retryAfter(c.value, now); got != c.want {
			t.Errorf("Retry-After %q: %v, want %v", c.value, got, c.want)
		}
	}
}

func TestJitterStaysInUpperHalf(t *testing.T) {
	for _, d := range []time.Duration{0, time.Millisecond, watchRetryMinMs * time.Millisecond, watchRetryMaxMs * time.Millisecond} {
		for range 1000 {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%v) = %v", d, j)
			}
		}
	}
}

func mustf(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, args...)
	}
}
