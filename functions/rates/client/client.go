// Package client reads the rates service's Server-Sent Events stream: a minimal SSE parser (Stream)
// for programs and load tests, and Watch, which prints the live rates in a terminal for
// `kawase rates watch`.
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// Limits of reading a stream.
const (
	lineBytesMax       = 1 << 20
	errorBodyBytesMax  = 4 << 10
	emittedCommentHead = ": emitted "
)

// Watch's reconnection: the wait before reconnecting starts at watchRetryMinMs and doubles with every
// attempt that brought no event, up to watchRetryMaxMs, each wait drawn from its upper half so that
// clients cut off together do not come back together; a Retry-After (503, 429) is waited at least,
// up to watchRetryAfterMaxMs. A stream with no event, heartbeats included, for watchIdleTimeoutMs
// (2.5 heartbeat intervals of 5 s) is taken for a dead connection and replaced.
const (
	watchRetryMinMs      = 500
	watchRetryMaxMs      = 30_000
	watchRetryAfterMaxMs = 300_000
	watchIdleTimeoutMs   = 12_500
)

// ErrRefused marks a stream request the server answered with a 4xx other than 429: retrying cannot
// help.
var ErrRefused = errors.New("stream refused")

// errIdle ends a stream that went silent for longer than the idle timeout.
var errIdle = errors.New("no event, not even a heartbeat")

// StatusError is a stream request answered with a status other than 200 OK. It wraps ErrRefused for
// a 4xx other than 429 Too Many Requests.
type StatusError struct {
	URL        string
	StatusCode int
	Status     string
	// Body is the start of the answer's body (a problem+json document from the rates service).
	Body string
	// RetryAfter is how long the server asked the client to wait (Retry-After); zero when it did not.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("stream %s: %s: %s", e.URL, e.Status, e.Body)
}

// Unwrap makes errors.Is(err, ErrRefused) hold for a 4xx other than 429.
func (e *StatusError) Unwrap() error {
	if e.StatusCode >= 400 && e.StatusCode < 500 && e.StatusCode != http.StatusTooManyRequests {
		return ErrRefused
	}
	return nil
}

// Event is one Server-Sent Event.
type Event struct {
	// Name is the event field ("snapshot", "rate", "heartbeat"); "message" when absent.
	Name string
	// Data is the data field (lines joined with "\n").
	Data string
	// Emitted is when the server published the update batch this event belongs to (from its
	// ": emitted <unix µs>" comment); zero when the server sent none.
	Emitted time.Time
}

// Rate is one rate as the REST API and the stream carry it.
type Rate struct {
	Pair      string `json:"pair"`
	Bid       string `json:"bid"`
	Ask       string `json:"ask"`
	Spread    string `json:"spread"`
	Time      string `json:"time"`
	Tradeable bool   `json:"tradeable"`
}

// StreamURL is the stream endpoint of the rates service at base (e.g. http://127.0.0.1:8080) for
// pairs (all when empty).
func StreamURL(base string, pairs []fx.Pair) string {
	u := strings.TrimRight(base, "/") + "/v1/rates/stream"
	if len(pairs) == 0 {
		return u
	}
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = string(p)
	}
	return u + "?pairs=" + url.QueryEscape(strings.Join(names, ","))
}

// Stream GETs the SSE stream at streamURL with hc and calls fn for each event until ctx ends, the
// server closes the stream, or fn returns an error (which Stream returns). An answer other than 200
// is a *StatusError, which wraps ErrRefused for a 4xx other than 429.
func Stream(ctx context.Context, hc *http.Client, streamURL string, fn func(Event) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, streamURL, nil)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streamURL, err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streamURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyBytesMax))
		return &StatusError{URL: streamURL, StatusCode: resp.StatusCode, Status: resp.Status,
			Body: strings.TrimSpace(string(body)), RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	}
	return parse(resp.Body, fn)
}

// retryAfter reads a Retry-After value, delay-seconds or an HTTP date; zero when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs <= 0 {
			return 0
		}
		return min(time.Duration(secs)*time.Second, watchRetryAfterMaxMs*time.Millisecond)
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return min(at.Sub(now), watchRetryAfterMaxMs*time.Millisecond)
	}
	return 0
}

// parse reads SSE from r (https://html.spec.whatwg.org/multipage/server-sent-events.html).
func parse(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), lineBytesMax)
	var (
		ev      Event
		data    strings.Builder
		hasData bool
		emitted time.Time
	)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if hasData {
				ev.Data, ev.Emitted = data.String(), emitted
				if ev.Name == "" {
					ev.Name = "message"
				}
				if err := fn(ev); err != nil {
					return err
				}
			}
			ev, hasData = Event{}, false
			data.Reset()
			continue
		}
		if rest, ok := strings.CutPrefix(line, emittedCommentHead); ok {
			if us, err := strconv.ParseInt(rest, 10, 64); err == nil {
				emitted = time.UnixMicro(us)
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Name = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	return io.EOF
}

// Watch prints the live rates of pairs (all when empty) from the rates service at base to out, one
// line per update with the direction of the bid, until ctx ends. It reconnects whenever the stream
// ends, fails or goes silent (a fresh snapshot follows), with backoff, for as long as ctx lasts; only a
// refused request (a 4xx other than 429, such as an unknown pair) ends it with an error.
func Watch(ctx context.Context, base string, pairs []fx.Pair, out io.Writer) error {
	return newWatcher().run(ctx, StreamURL(base, pairs), out)
}

// watcher is Watch with its timings, which tests shorten.
type watcher struct {
	hc          *http.Client
	retryMin    time.Duration
	retryMax    time.Duration
	idleTimeout time.Duration
}

func newWatcher() *watcher {
	// Its own transport: no client-wide timeout (a stream lasts), and nothing shared with other users
	// of http.DefaultTransport. A dead connection is caught by the idle watchdog instead.
	return &watcher{hc: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		retryMin: watchRetryMinMs * time.Millisecond, retryMax: watchRetryMaxMs * time.Millisecond,
		idleTimeout: watchIdleTimeoutMs * time.Millisecond}
}

func (w *watcher) run(ctx context.Context, streamURL string, out io.Writer) error {
	last := map[string]decimal.Decimal{}
	backoff := w.retryMin
	for {
		got, err := w.attempt(ctx, streamURL, func(e Event) error { return printEvent(out, e, last) })
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrRefused):
			return fmt.Errorf("watch rates: %w", err)
		}
		if got {
			backoff = w.retryMin // the connection worked: start over
		}
		wait := jitter(backoff)
		backoff = min(2*backoff, w.retryMax)
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > wait {
			wait = se.RetryAfter
		}
		fmt.Fprintf(out, "-- stream ended (%v); reconnecting in %v\n", err, wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// attempt reads one stream until it ends, calling fn for each event; it ends the stream with errIdle
// when no event comes for the idle timeout, from the request on. got reports whether any event came.
func (w *watcher) attempt(ctx context.Context, streamURL string, fn func(Event) error) (got bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(w.idleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()
	err = Stream(ctx, w.hc, streamURL, func(e Event) error {
		got = true
		idle.Reset(w.idleTimeout)
		return fn(e)
	})
	if errors.Is(context.Cause(ctx), errIdle) {
		err = fmt.Errorf("stream %s: %w for %v", streamURL, errIdle, w.idleTimeout)
	}
	return got, err
}

// jitter draws a wait from the upper half of d.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

func printEvent(out io.Writer, e Event, last map[string]decimal.Decimal) error {
	switch e.Name {
	case "snapshot":
		var s struct{ Rates []Rate }
		if err := json.Unmarshal([]byte(e.Data), &s); err != nil {
			return fmt.Errorf("decode snapshot: %w", err)
		}
		for _, r := range s.Rates {
			printRate(out, r, last)
		}
	case "rate":
		var r Rate
		if err := json.Unmarshal([]byte(e.Data), &r); err != nil {
			return fmt.Errorf("decode rate: %w", err)
		}
		printRate(out, r, last)
	}
	return nil
}

func printRate(out io.Writer, r Rate, last map[string]decimal.Decimal) {
	arrow := " "
	bid, err := decimal.NewFromString(r.Bid)
	if prev, ok := last[r.Pair]; ok && err == nil {
		switch bid.Cmp(prev) {
		case 1:
			arrow = "▲"
		case -1:
			arrow = "▼"
		}
	}
	if err == nil {
		last[r.Pair] = bid
	}
	state := ""
	if !r.Tradeable {
		state = "  (not tradeable)"
	}
	clock := r.Time
	if len(clock) >= 23 {
		clock = clock[11:23]
	}
	fmt.Fprintf(out, "%s  %-8s %12s / %-12s %s  spread %s%s\n", clock, r.Pair, r.Bid, r.Ask, arrow, r.Spread, state)
}
