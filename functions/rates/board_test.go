package rates_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
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
// with changing rates through the broker, and dumps the live DOM twice: it must show every pair with
// bid and ask, and the prices must have moved (with up/down colouring and a sparkline) in between.
//
// The DOM is read over the DevTools protocol (--remote-debugging-pipe) rather than --dump-dom:
// --dump-dom snapshots at the load event, before the stream's first event, and --virtual-time-budget
// never expires while an EventSource is open.
func TestBoardInHeadlessChromium(t *testing.T) {
	chromium := findChromium(t)
	env := startRates(t, rates.Config{ConflateInterval: 100 * time.Millisecond}, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 2*testTimeout)
	defer cancel()
	go feedAllPairs(ctx, t, env)
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
}

func priceOf(spec fx.PairSpec, s string) bool {
	i := strings.IndexByte(s, '.')
	return i > 0 && len(s)-i-1 == int(spec.Precision)
}

// feedAllPairs publishes a rising quote of every pair every 100 ms until ctx ends.
func feedAllPairs(ctx context.Context, t *testing.T, env *ratesEnv) {
	for i := 1; ctx.Err() == nil; i++ {
		batch := make([]eventing.RateV1, 0, len(fx.Pairs()))
		for _, spec := range fx.Pairs() {
			batch = append(batch, quote(spec.Pair, i, 1))
		}
		if err := env.tryPublish(ctx, batch...); err != nil {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type boardRow struct {
	bid, ask    string
	moved       bool // the bid cell is coloured up or down
	sparkPoints int
}

var (
	rowRe   = regexp.MustCompile(`<tr id="pair-([A-Z_]+)"[^>]*>(.*?)</tr>`)
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
			r := boardRow{}
			if bm := bidRe.FindStringSubmatch(m[2]); bm != nil {
				r.bid, r.moved = bm[2], bm[1] != ""
			}
			if am := askRe.FindStringSubmatch(m[2]); am != nil {
				r.ask = am[1]
			}
			if sm := sparkRe.FindStringSubmatch(m[2]); sm != nil {
				r.sparkPoints = len(strings.Fields(sm[1]))
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
