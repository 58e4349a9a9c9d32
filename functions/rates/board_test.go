package rates_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/functions/rates"
)

// browserCloseTimeout is how long Chromium gets to exit after Browser.close.
const browserCloseTimeout = 10 * time.Second

// chromiumNames are the executables tried for the headless browser test.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome"}

func findChromium(t *testing.T) string {
	t.Helper()
	for _, n := range chromiumNames {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv("KAWASE_REQUIRE_TOOLS") != "" {
		t.Fatalf("no chromium found (%v); `make deps` installs Debian's chromium", chromiumNames)
	}
	t.Skipf("no chromium found (%v); the board's browser test needs it", chromiumNames)
	return ""
}

// TestBoardInHeadlessChromium loads the rate board in a real headless Chromium against a service fed
// with changing rates through the broker, and dumps the live DOM as it goes: it must show every pair
// with bid and ask, and the prices must move (with up/down colouring and a sparkline). Then the board
// must ride out what breaks a stream:
//   - a tradeable flip alone (no price change) greys the rows but adds no sparkline point;
//   - a stream cut and its reconnection answered 503 (as during a rollout, which closes an EventSource
//     for good): the page opens a new stream and the prices move again;
//   - a stream that answers and then says nothing (a half-open connection): after 2.5 heartbeats of
//     silence the page shows every row stale, though the server holds them tradeable, and reconnects.
//
// The DOM is read over the DevTools protocol (--remote-debugging-pipe) rather than --dump-dom:
// --dump-dom snapshots at the load event, before the stream's first event, and --virtual-time-budget
// never expires while an EventSource is open.
func TestBoardInHeadlessChromium(t *testing.T) {
	const staleAfter = 5 * time.Second
	chromium := findChromium(t)
	gate := &streamGate{cancels: map[*streamCancel]bool{}}
	env := newRatesEnv(t, rates.Config{ConflateInterval: 100 * time.Millisecond, StaleAfter: staleAfter}, nil)
	env.wrap = gate.wrap
	env.start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*testTimeout)
	defer cancel()
	feed := &boardFeed{}
	go feed.run(ctx, env)
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })

	b := startBrowser(ctx, t, chromium)
	session := b.open(t, env.srv.URL+"/")
	first := waitForBoard(t, b, session, func(rows map[string]boardRow) bool { return len(rows) == len(fx.Pairs()) })
	for _, spec := range fx.Pairs() {
		r, ok := first[string(spec.Pair)]
		mustf(t, ok, "the board lacks %s", spec.Pair)
		mustf(t, priceOf(spec, r.bid) && priceOf(spec, r.ask), "%s shows bid %q ask %q", spec.Pair, r.bid, r.ask)
	}
	second := waitForBoard(t, b, session, func(rows map[string]boardRow) bool {
		for p, r := range rows {
			if r.bid == first[p].bid || !r.moved || r.sparkPoints < 2 {
				return false
			}
		}
		return true
	})
	t.Logf("USD_JPY bid %s, then %s", first["USD_JPY"].bid, second["USD_JPY"].bid)
	status := b.eval(t, session, `document.getElementById("status").textContent`)
	mustf(t, status == `"live"`, "status shows %s", status)

	// Tradeable flips alone: with the feed paused and the page showing its last prices, the pairs go
	// stale; the rows grey out, and their sparklines stay exactly as they were.
	last := feed.pause()
	settled := waitForBoard(t, b, session, func(rows map[string]boardRow) bool {
		for _, spec := range fx.Pairs() {
			if r := rows[string(spec.Pair)]; r.bid != spec.FormatPrice(quote(spec.Pair, last, 1).Bid) || r.stale {
				return false
			}
		}
		return true
	})
	env.clock.Advance(staleAfter + time.Millisecond)
	flipped := waitForBoard(t, b, session, func(rows map[string]boardRow) bool { return allRows(rows, boardRow.isStale) })
	for p, r := range flipped {
		mustf(t, r.bid == settled[p].bid && r.spark == settled[p].spark,
			"%s: a tradeable flip changed bid %s → %s, sparkline %q → %q", p, settled[p].bid, r.bid, settled[p].spark, r.spark)
	}
	feed.resume()
	waitForBoard(t, b, session, func(rows map[string]boardRow) bool {
		return allRows(rows, func(r boardRow) bool { return !r.stale && r.bid != flipped[r.pair].bid })
	})

	// A 503 for the reconnection after a cut: the page must come back by itself, and not by way of its
	// silence watchdog, which is held off meanwhile.
	freezeClock(t, b, session)
	gate.set(func(g *streamGate) { g.refuse = 1 })
	gate.cut()
	eventually(t, "the reconnection refused", func() bool { return gate.get(func(g *streamGate) int { return g.refused }) == 1 })
	refusedAt := waitForBoard(t, b, session, func(map[string]boardRow) bool { return true })
	waitForBoard(t, b, session, func(rows map[string]boardRow) bool {
		return allRows(rows, func(r boardRow) bool { return !r.stale && r.bid != refusedAt[r.pair].bid })
	})
	status = b.eval(t, session, `document.getElementById("status").textContent`)
	mustf(t, status == `"live"`, "after the 503, status shows %s", status)
	thawClock(t, b, session)

	// A silent stream, then refusals until the test has seen the rows go stale.
	gate.set(func(g *streamGate) { g.mute, g.refuseAll = 1, true })
	gate.cut()
	eventually(t, "the silent stream served", func() bool { return gate.get(func(g *streamGate) int { return g.muted }) == 1 })
	dark := waitForBoard(t, b, session, func(rows map[string]boardRow) bool { return allRows(rows, boardRow.isStale) })
	for _, r := range decodeList(t, get(t, env.srv.URL+"/v1/rates").body) {
		mustf(t, r.Tradeable, "%s is not tradeable on the server: the rows' staleness proves nothing", r.Pair)
	}
	status = b.eval(t, session, `document.getElementById("status").className`)
	mustf(t, status == `"down"`, "with no data, status is %s", status)
	gate.set(func(g *streamGate) { g.refuseAll = false })
	waitForBoard(t, b, session, func(rows map[string]boardRow) bool {
		return allRows(rows, func(r boardRow) bool { return !r.stale && r.bid != dark[r.pair].bid })
	})
	status = b.eval(t, session, `document.getElementById("status").textContent`)
	mustf(t, status == `"live"`, "after the silent stream, status shows %s", status)
}

// freezeClock stops the page's Date.now, which is the only clock of the board's silence watchdog, so
// the watchdog cannot fire and what is tested is the rest of the page.
func freezeClock(t *testing.T, b *browser, session string) {
	t.Helper()
	b.eval(t, session, `window.realNow = Date.now; window.frozenNow = Date.now(); Date.now = function () { return window.frozenNow; }; true`)
}

// thawClock lets the page's Date.now run again once an event has been seen at the present frozen
// time, so the watchdog does not take the time spent frozen for silence.
func thawClock(t *testing.T, b *browser, session string) {
	t.Helper()
	b.eval(t, session, `window.frozenNow = window.realNow(); true`)
	at := waitForBoard(t, b, session, func(map[string]boardRow) bool { return true })
	waitForBoard(t, b, session, func(rows map[string]boardRow) bool {
		return allRows(rows, func(r boardRow) bool { return r.bid != at[r.pair].bid })
	})
	b.eval(t, session, `Date.now = window.realNow; true`)
}

func priceOf(spec fx.PairSpec, s string) bool {
	i := strings.IndexByte(s, '.')
	return i > 0 && len(s)-i-1 == int(spec.Precision)
}

// allRows reports whether the board has every pair and ok holds for each row.
func allRows(rows map[string]boardRow, ok func(boardRow) bool) bool {
	if len(rows) != len(fx.Pairs()) {
		return false
	}
	for _, r := range rows {
		if !ok(r) {
			return false
		}
	}
	return true
}

// boardFeed publishes a rising quote of every pair every 100 ms until ctx ends, except while paused.
type boardFeed struct {
	mu   sync.Mutex // held while a batch is published, and while paused
	last int        // the quote number of the last batch published
}

func (f *boardFeed) run(ctx context.Context, env *ratesEnv) {
	for i := 1; ctx.Err() == nil; i++ {
		batch := make([]eventing.RateV1, 0, len(fx.Pairs()))
		for _, spec := range fx.Pairs() {
			batch = append(batch, quote(spec.Pair, i, 1))
		}
		f.mu.Lock()
		err := env.tryPublish(ctx, batch...)
		if err == nil {
			f.last = i
		}
		f.mu.Unlock()
		if err != nil {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pause stops the feed once its current batch is published and returns that batch's quote number.
func (f *boardFeed) pause() int {
	f.mu.Lock()
	return f.last
}

func (f *boardFeed) resume() { f.mu.Unlock() }

// streamGate stands in front of the stream endpoint: it can cut the streams open now, answer the
// next requests with 503 (as a replica at its limit, or an ingress during a rollout, does), or answer
// one with a stream that sends nothing at all.
type streamGate struct {
	mu        sync.Mutex
	cancels   map[*streamCancel]bool
	mute      int  // answer this many next requests with a silent stream
	refuse    int  // then answer this many with 503
	refuseAll bool // then answer every one with 503
	muted     int
	refused   int
}

type streamCancel struct{ cancel context.CancelFunc }

func (g *streamGate) set(fn func(*streamGate)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fn(g)
}

func (g *streamGate) get(fn func(*streamGate) int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fn(g)
}

// cut ends every stream open now.
func (g *streamGate) cut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.cancels {
		c.cancel()
	}
}

func (g *streamGate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/rates/stream" {
			next.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		c := &streamCancel{cancel: cancel}
		g.mu.Lock()
		mute := g.mute > 0
		refuse := !mute && (g.refuse > 0 || g.refuseAll)
		switch {
		case mute:
			g.mute--
			g.muted++
		case refuse:
			g.refuse = max(g.refuse-1, 0)
			g.refused++
		}
		if !refuse {
			g.cancels[c] = true
		}
		g.mu.Unlock()
		defer func() {
			cancel()
			g.mu.Lock()
			delete(g.cancels, c)
			g.mu.Unlock()
		}()
		switch {
		case refuse:
			w.Header().Set("Retry-After", "1")
			observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "too_many_streams",
				Title: "too many streams", Detail: "refused by the test"})
		case mute:
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			_ = http.NewResponseController(w).Flush()
			<-ctx.Done()
		default:
			next.ServeHTTP(w, r.WithContext(ctx))
		}
	})
}

type boardRow struct {
	pair, bid, ask string
	moved          bool // the bid cell is coloured up or down
	stale          bool // the row is shown stale
	sparkPoints    int
	spark          string // the sparkline's points
}

func (r boardRow) isStale() bool { return r.stale }

var (
	rowRe   = regexp.MustCompile(`<tr id="pair-([A-Z_]+)"([^>]*)>(.*?)</tr>`)
	bidRe   = regexp.MustCompile(`<td class="bid( up| down)?">([0-9.]*)</td>`)
	askRe   = regexp.MustCompile(`<td class="ask[^"]*">([0-9.]*)</td>`)
	sparkRe = regexp.MustCompile(`<polyline points="([^"]*)"`)
)

// waitForBoard dumps the DOM until ok holds for its rows.
func waitForBoard(t *testing.T, b *browser, session string, ok func(map[string]boardRow) bool) map[string]boardRow {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		var html string // stays empty while the page is still loading
		if v, err := b.tryEval(t, session, "document.documentElement.outerHTML"); err == nil {
			_ = json.Unmarshal([]byte(v), &html)
		}
		rows := map[string]boardRow{}
		for _, m := range rowRe.FindAllStringSubmatch(html, -1) {
			r := boardRow{pair: m[1], stale: strings.Contains(m[2], `class="stale"`)}
			if bm := bidRe.FindStringSubmatch(m[3]); bm != nil {
				r.bid, r.moved = bm[2], bm[1] != ""
			}
			if am := askRe.FindStringSubmatch(m[3]); am != nil {
				r.ask = am[1]
			}
			if sm := sparkRe.FindStringSubmatch(m[3]); sm != nil {
				r.spark, r.sparkPoints = sm[1], len(strings.Fields(sm[1]))
			}
			rows[m[1]] = r
		}
		if ok(rows) {
			return rows
		}
		if time.Now().After(deadline) {
			t.Fatalf("the board never got there; last DOM:\n%s", html)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// browser is headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out;
// messages are JSON terminated by NUL).
type browser struct {
	in  io.Writer
	out *bufio.Reader
	id  int
}

func startBrowser(ctx context.Context, t *testing.T, path string) *browser {
	t.Helper()
	profile, err := os.MkdirTemp("", "kawase-board-")
	if err != nil {
		t.Fatal(err)
	}
	toBrowserR, toBrowserW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fromBrowserR, fromBrowserW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+profile, "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{toBrowserR, fromBrowserW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers are killed with it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toBrowserR.Close()
	fromBrowserW.Close()
	b := &browser{in: toBrowserW, out: bufio.NewReader(fromBrowserR)}
	t.Cleanup(func() {
		_, _ = toBrowserW.Write([]byte(`{"id":999999,"method":"Browser.close"}` + "\x00"))
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(browserCloseTimeout):
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		toBrowserW.Close()
		fromBrowserR.Close()
		for range 20 { // helpers may still be flushing the profile for a moment
			if os.RemoveAll(profile) == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	return b
}

// call sends one command and returns its result, skipping events and other replies.
func (b *browser) call(t *testing.T, session, method string, params any) json.RawMessage {
	t.Helper()
	b.id++
	msg := map[string]any{"id": b.id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.in.Write(append(data, 0)); err != nil {
		t.Fatalf("devtools %s: %v", method, err)
	}
	for {
		raw, err := b.out.ReadBytes(0)
		if err != nil {
			t.Fatalf("devtools %s: %v", method, err)
		}
		var reply struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(raw[:len(raw)-1], &reply); err != nil {
			t.Fatalf("devtools %s: %v", method, err)
		}
		if reply.ID != b.id {
			continue
		}
		if reply.Error != nil {
			t.Fatalf("devtools %s: %s", method, reply.Error.Message)
		}
		return reply.Result
	}
}

// open navigates a new tab to url and returns its session.
func (b *browser) open(t *testing.T, url string) string {
	t.Helper()
	var target struct{ TargetID string }
	if err := json.Unmarshal(b.call(t, "", "Target.createTarget", map[string]any{"url": url}), &target); err != nil {
		t.Fatal(err)
	}
	var attached struct{ SessionID string }
	res := b.call(t, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true})
	if err := json.Unmarshal(res, &attached); err != nil || attached.SessionID == "" {
		t.Fatalf("attach to %s: %s %v", url, res, err)
	}
	return attached.SessionID
}

// eval evaluates expression in the page and returns its value as JSON.
func (b *browser) eval(t *testing.T, session, expression string) string {
	t.Helper()
	v, err := b.tryEval(t, session, expression)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tryEval is eval that returns a script exception as an error.
func (b *browser) tryEval(t *testing.T, session, expression string) (string, error) {
	t.Helper()
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails any `json:"exceptionDetails"`
	}
	raw := b.call(t, session, "Runtime.evaluate", map[string]any{"expression": expression, "returnByValue": true})
	if err := json.Unmarshal(raw, &res); err != nil || res.ExceptionDetails != nil {
		return "", fmt.Errorf("evaluate %s: %s %v", expression, raw, err)
	}
	return string(res.Result.Value), nil
}
