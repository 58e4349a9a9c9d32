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
	watchRetryMax      = 10
	watchRetryDelayMs  = 1_000
	errorBodyBytesMax  = 4 << 10
	emittedCommentHead = ": emitted "
)

// ErrRefused marks a stream request the server answered with a 4xx: retrying cannot help.
var ErrRefused = errors.New("stream refused")

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
// server closes the stream, or fn returns an error (which Stream returns). A 4xx answer wraps
// ErrRefused.
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
		err := fmt.Errorf("stream %s: %s: %s", streamURL, resp.Status, strings.TrimSpace(string(body)))
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		return err
	}
	return parse(resp.Body, fn)
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
// line per update with the direction of the bid, until ctx ends. It reconnects after a dropped
// stream (a fresh snapshot follows), up to watchRetryMax times in a row.
func Watch(ctx context.Context, base string, pairs []fx.Pair, out io.Writer) error {
	last := map[string]decimal.Decimal{}
	failures := 0
	for {
		err := Stream(ctx, http.DefaultClient, StreamURL(base, pairs), func(e Event) error {
			failures = 0
			return printEvent(out, e, last)
		})
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrRefused):
			return err
		}
		failures++
		if failures > watchRetryMax {
			return fmt.Errorf("watch rates: gave up after %d attempts: %w", watchRetryMax, err)
		}
		fmt.Fprintf(out, "-- stream ended (%v); reconnecting\n", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchRetryDelayMs * time.Millisecond):
		}
	}
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
