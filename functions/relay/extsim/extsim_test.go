package extsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing/signature"
)

const testSecret = "extsim-test-secret-0123456789"

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func startSim(t *testing.T, cfg Config) (*Sim, *httptest.Server) {
	t.Helper()
	cfg.Secrets = []string{testSecret}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return s, srv
}

// deliver sends a correctly signed delivery over HTTP and returns the status.
func deliver(t *testing.T, url, acct string, seq int64, now time.Time) int {
	t.Helper()
	id := fmt.Sprintf("x-%s-%d", acct, seq)
	body := fmt.Appendf(nil, `{"executionId":%q,"accountId":%q,"accountSeq":%d}`, id, acct, seq)
	signer, err := signature.NewSigner([]string{testSecret})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, url+DeliveryPath, bytes.NewReader(body))
	req.Header.Set(signature.HeaderSignature, signer.Sign(now, body))
	req.Header.Set(signature.HeaderIdempotencyKey, id)
	req.Header.Set(signature.HeaderAccountID, acct)
	req.Header.Set(signature.HeaderAccountSeq, strconv.FormatInt(seq, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestSequenceChecks(t *testing.T) {
	s, srv := startSim(t, Config{})
	now := time.Now()
	for _, seq := range []int64{1, 2, 5, 3, 3, 4} {
		if code := deliver(t, srv.URL, "a", seq, now); code != http.StatusOK {
			t.Fatalf("seq %d: %d", seq, code)
		}
	}
	st := s.Stats()
	// 5 skipped ahead (one gap opened), 3 and 4 arrived late (two reorders), 3 twice (a duplicate).
	if st.Accepted != 5 || st.Duplicates != 1 || st.GapsOpened != 1 || st.Reorders != 2 || st.Gaps != 0 {
		t.Fatalf("stats %+v", st)
	}
	if a := st.Accounts["a"]; a.LastSeq != 5 || !a.Complete() || a.Received != 5 {
		t.Fatalf("account %+v", a)
	}
	deliver(t, srv.URL, "b", 2, now)
	st = s.Stats()
	if st.Gaps != 1 || st.Accounts["b"].Complete() {
		t.Fatalf("a hole at b/1 not reported: %+v", st)
	}
	// The stats endpoint says the same as JSON.
	resp, err := http.Get(srv.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var js map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&js); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"accepted", "duplicates", "badSignatures", "gaps", "reorders", "accounts"} {
		if _, ok := js[k]; !ok {
			t.Errorf("GET /stats lacks %q: %v", k, js)
		}
	}
	if js["gaps"] != float64(1) {
		t.Errorf("GET /stats gaps = %v", js["gaps"])
	}
}

func TestScheduleAndControl(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	sc, err := ParseSchedule("open=40s,closed=20s")
	if err != nil {
		t.Fatal(err)
	}
	s, srv := startSim(t, Config{Schedule: sc, Now: clock.now})
	if code := deliver(t, srv.URL, "a", 1, clock.now()); code != http.StatusOK {
		t.Fatalf("open hours: %d", code)
	}
	clock.advance(45 * time.Second)
	if code := deliver(t, srv.URL, "a", 2, clock.now()); code != http.StatusServiceUnavailable {
		t.Fatalf("closed hours: %d", code)
	}
	clock.advance(20 * time.Second) // 65 s: open again
	if code := deliver(t, srv.URL, "a", 2, clock.now()); code != http.StatusOK {
		t.Fatalf("reopened: %d", code)
	}
	control := func(path, body string) {
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	control("/control/close", "")
	if code := deliver(t, srv.URL, "a", 3, clock.now()); code != http.StatusServiceUnavailable {
		t.Fatalf("closed by control: %d", code)
	}
	control("/control/open", "")
	clock.advance(45 * time.Second) // the schedule says closed, the override says open
	if code := deliver(t, srv.URL, "a", 3, clock.now()); code != http.StatusOK {
		t.Fatalf("opened by control: %d", code)
	}
	control("/control/resume", "")
	if s.IsOpen() {
		t.Fatal("resume did not follow the schedule (closed at 110 s)")
	}
	control("/control/open", "")
	control("/control/refuse", `{"accountId":"p","status":409,"reason":"frozen"}`)
	if code := deliver(t, srv.URL, "p", 1, clock.now()); code != http.StatusConflict {
		t.Fatalf("refused account: %d", code)
	}
	control("/control/allow", `{"accountId":"p"}`)
	if code := deliver(t, srv.URL, "p", 1, clock.now()); code != http.StatusOK {
		t.Fatalf("allowed again: %d", code)
	}
	if st := s.Stats(); st.Refused != 1 || st.ClosedAnswers != 2 || st.Accepted != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestParseSchedule(t *testing.T) {
	for _, bad := range []string{"open=40s,closed", "closed=20s", "open=-1s", "open=1s,open=2s", "shut=1s"} {
		if _, err := ParseSchedule(bad); err == nil {
			t.Errorf("ParseSchedule(%q) accepted", bad)
		}
	}
	sc, err := ParseSchedule("closed=20s, open=40s")
	if err != nil || sc.Open != 40*time.Second || sc.Closed != 20*time.Second {
		t.Fatalf("%+v %v", sc, err)
	}
	if open, in := sc.at(50 * time.Second); open || in != 10*time.Second {
		t.Fatalf("at 50 s: %v %s", open, in)
	}
}

func TestInjectedFailures(t *testing.T) {
	s, srv := startSim(t, Config{FailPercent: 100})
	if code := deliver(t, srv.URL, "a", 1, time.Now()); code != http.StatusInternalServerError {
		t.Fatalf("injected failure: %d", code)
	}
	if st := s.Stats(); st.InjectedFailures != 1 || st.Accepted != 0 {
		t.Fatalf("stats %+v", st)
	}
}
