package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/deadletters"
	"github.com/kawase-fx/kawase/functions/relay"
	"github.com/kawase-fx/kawase/functions/relay/extsim"
)

// Sizes and limits of the relay tests.
const (
	relayTestSecret     = "relay-stack-test-secret-0123456789"
	relayTestAdminToken = "relay-stack-admin-token"
	relayTestWaitSec    = 180
	// dispatcher simulation: Knative's ordered channel dispatcher, scaled down.
	simPartitions      = 12
	simAttempts        = 3
	simBackoffMs       = 2
	simErrorDataMax    = 1024
	simDeadLetterTries = 50
)

// outageFull runs the outage test at the full size: 10,000 executions of 100 accounts, 7,500
// of them while the external system is closed; -outage.full=false runs a smaller version quickly.
var outageFull = flag.Bool("outage.full", true, "run the outage test with 10,000 executions; false runs a quick smaller version")

// relayStack is the path of an execution out of kawase, every part over real HTTP: the relay, the
// external-system simulator it delivers to, and the deadletters service (real PostgreSQL) with its
// redrive.
type relayStack struct {
	sim      *extsim.Sim
	relayURL string
	dlURL    string
	dl       *deadletters.Service
	redrive  func()
}

func startRelayStack(tb testing.TB, timeScale int, simCfg extsim.Config) *relayStack {
	tb.Helper()
	ctx := context.Background()
	simCfg.Secrets = []string{relayTestSecret}
	sim, err := extsim.New(simCfg)
	if err != nil {
		tb.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	tb.Cleanup(simSrv.Close)
	rl, err := relay.New(relay.Config{ExternalURL: simSrv.URL + extsim.DeliveryPath, Secrets: []string{relayTestSecret},
		TimeScale: timeScale}, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	relaySrv := httptest.NewServer(rl)
	tb.Cleanup(relaySrv.Close)

	dbURL := pgtest.URL(tb)
	if err := deadletters.Migrate(ctx, dbURL); err != nil {
		tb.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, dbURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	dl, err := deadletters.New(deadletters.Config{AdminToken: relayTestAdminToken, TimeScale: timeScale}, pool,
		zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	dlSrv := httptest.NewServer(dl.Handler())
	tb.Cleanup(dlSrv.Close)
	st := &relayStack{sim: sim, relayURL: relaySrv.URL + "/", dlURL: dlSrv.URL, dl: dl}
	var once sync.Once
	st.redrive = func() {
		once.Do(func() {
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { _ = dl.Run(rctx); close(done) }()
			tb.Cleanup(func() { cancel(); <-done })
		})
	}
	return st
}

// executionEvents returns perAccount executions for each of accounts accounts, in publishing order
// (sequence-major, so every partition carries many accounts).
func executionEvents(tb testing.TB, accounts, perAccount int) []cloudevents.Event {
	tb.Helper()
	var out []cloudevents.Event
	for seq := 1; seq <= perAccount; seq++ {
		for a := range accounts {
			acct := fmt.Sprintf("acct-%03d", a)
			x := &eventing.TradeExecutedV1{ExecutionID: fmt.Sprintf("exe-%s-%05d", acct, seq), AccountID: acct,
				AccountSeq: int64(seq), OrderID: fmt.Sprintf("ord-%s-%05d", acct, seq), Pair: "EUR_USD",
				Side: eventing.SideSell, Units: decimal.NewFromInt(10_000), Price: decimal.RequireFromString("1.08423"),
				RealizedPL: decimal.RequireFromString("-12.50"), Currency: "USD", Reason: "order",
				ExecutedAt: time.Now().UTC()}
			e, err := eventing.NewEvent(eventing.TypeTradeExecuted, x.ExecutionID, x)
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, e)
		}
	}
	return out
}

// simDispatcher delivers events as Knative's Kafka channel dispatcher does for an ordered
// Subscription: per partition one event at a time; a retryable answer (no answer, 5xx, 404, 408, 409,
// 429) is retried up to simAttempts attempts in all; then, or at once for any other 4xx, the event
// goes to the dead-letter sink with knativeerrordest, knativeerrorcode, knativeerrordata (base64 of
// the answer's first 1024 bytes) and the record's knativekafkapartition/knativekafkaoffset, and the
// partition moves on.
type simDispatcher struct {
	subscriber, sink string
	mu               sync.Mutex
	offsets          [simPartitions]int64
	delivered        int64
	deadLettered     int64
}

func (d *simDispatcher) run(tb testing.TB, events []cloudevents.Event) {
	tb.Helper()
	var parts [simPartitions][]cloudevents.Event
	for _, e := range events {
		h := fnv.New32a()
		h.Write([]byte(eventing.PartitionKey(e)))
		p := h.Sum32() % simPartitions
		parts[p] = append(parts[p], e)
	}
	var wg sync.WaitGroup
	for p := range parts {
		wg.Go(func() {
			for _, e := range parts[p] {
				d.mu.Lock()
				off := d.offsets[p]
				d.offsets[p]++
				d.mu.Unlock()
				d.deliver(tb, e, p, off)
			}
		})
	}
	wg.Wait()
}

func (d *simDispatcher) deliver(tb testing.TB, e cloudevents.Event, partition int, offset int64) {
	e = e.Clone()
	e.SetExtension("knativekafkapartition", strconv.Itoa(partition))
	e.SetExtension("knativekafkaoffset", strconv.FormatInt(offset, 10))
	var (
		status int
		body   []byte
	)
	for attempt := 1; attempt <= simAttempts; attempt++ {
		status, body = postRelayEvent(d.subscriber, e)
		if status >= 200 && status < 300 {
			d.mu.Lock()
			d.delivered++
			d.mu.Unlock()
			return
		}
		retryable := status == 0 || status >= 500 || status == 404 || status == 408 || status == 409 || status == 429
		if !retryable {
			break
		}
		time.Sleep(simBackoffMs * time.Millisecond * time.Duration(attempt))
	}
	dl := e.Clone()
	dl.SetExtension("knativeerrordest", d.subscriber)
	if status != 0 {
		dl.SetExtension("knativeerrorcode", strconv.Itoa(status))
		dl.SetExtension("knativeerrordata", base64.StdEncoding.EncodeToString(body[:min(len(body), simErrorDataMax)]))
	}
	for range simDeadLetterTries {
		if s, _ := postRelayEvent(d.sink, dl); s >= 200 && s < 300 {
			d.mu.Lock()
			d.deadLettered++
			d.mu.Unlock()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Errorf("dead-letter sink never took %s", e.ID())
}

// postRelayEvent sends e in binary mode and returns the status (0 when there was no answer) and body.
func postRelayEvent(url string, e cloudevents.Event) (int, []byte) {
	req, err := cehttp.NewHTTPRequestFromEvent(context.Background(), url, e)
	if err != nil {
		return 0, []byte(err.Error())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, b
}

// dlAPI calls the deadletters REST API with the admin token.
func (st *relayStack) dlAPI(tb testing.TB, method, path string, out any) int {
	tb.Helper()
	req, _ := http.NewRequest(method, st.dlURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+relayTestAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			tb.Fatalf("%s %s: %d: %v", method, path, resp.StatusCode, err)
		}
	}
	return resp.StatusCode
}

// letters returns every dead letter the query selects, following the pages.
func (st *relayStack) letters(tb testing.TB, query string) []deadletters.DeadLetter {
	tb.Helper()
	var all []deadletters.DeadLetter
	after := int64(0)
	for {
		var page deadletters.ListPage
		if code := st.dlAPI(tb, http.MethodGet, fmt.Sprintf("/v1/deadletters?pageSize=500&after=%d&%s", after, query), &page); code != http.StatusOK {
			tb.Fatalf("list %s: %d", query, code)
		}
		all = append(all, page.Items...)
		if page.NextAfter == 0 {
			return all
		}
		after = page.NextAfter
	}
}

func waitForRelayStack(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(relayTestWaitSec * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %d s waiting for %s", relayTestWaitSec, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOutageNothingLostNothingTwice is the outage test, scaled: 2,000 executions of 50 accounts.
// The external system is closed while the first 1,500 are published: the relay answers 503, the
// dispatcher retries and then dead-letters each one, and the deadletters service parks them. Then it
// opens; the last 500 are published live while the redrive replays the parked ones, oldest first.
//
// "Complete" means: the external system accepted each execution exactly once (accepted == 2,000;
// any second delivery of a key was answered 200 and counted as a duplicate, never accepted again),
// and for every account the sequence numbers it accepted are exactly 1..40 (lastSeq 40, contiguous
// 40, nothing missing, gaps == 0). Reorders are allowed and reported: live deliveries overtake
// parked ones while the redrive catches up, and the receiver orders by Kawase-Account-Seq.
func TestOutageNothingLostNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("outage scenario")
	}
	accounts, perAccount, whileClosed := 50, 40, 1_500
	if *outageFull {
		accounts, perAccount, whileClosed = 100, 100, 7_500
	}
	// Besides the outages, 3 % of the deliveries fail with a random 500.
	st := startRelayStack(t, 100, extsim.Config{StartClosed: true, FailPercent: 3})
	st.redrive()
	events := executionEvents(t, accounts, perAccount)
	d := &simDispatcher{subscriber: st.relayURL, sink: st.dlURL + "/"}

	d.run(t, events[:whileClosed])
	if d.delivered != 0 || d.deadLettered != int64(whileClosed) {
		t.Fatalf("while closed: %d delivered, %d dead-lettered", d.delivered, d.deadLettered)
	}
	if parked := st.letters(t, "category=parked"); len(parked) != whileClosed {
		t.Fatalf("%d parked dead letters, want %d", len(parked), whileClosed)
	}
	if s := st.sim.Stats(); s.Accepted != 0 || s.ClosedAnswers == 0 {
		t.Fatalf("closed external system: %+v", s)
	}

	if err := st.sim.SetMode(extsim.ModeOpen); err != nil {
		t.Fatal(err)
	}
	// A second, short outage while the backlog drains: the redrive must stop, back off and resume.
	reclosed := make(chan error, 1)
	go func() { reclosed <- closeBriefly(st.sim, int64(whileClosed/2)) }()
	d.run(t, events[whileClosed:])
	if err := <-reclosed; err != nil {
		t.Fatal(err)
	}
	waitForRelayStack(t, "every execution accepted and no parked dead letter left", func() bool {
		return st.sim.Stats().Accepted == int64(len(events)) && len(st.letters(t, "category=parked")) == 0
	})

	s := st.sim.Stats()
	t.Logf("external system: accepted %d, duplicates %d, reorders %d, gaps opened %d, gaps %d, closed answers %d, injected failures %d; dispatcher: %d delivered live, %d dead-lettered",
		s.Accepted, s.Duplicates, s.Reorders, s.GapsOpened, s.Gaps, s.ClosedAnswers, s.InjectedFailures, d.delivered, d.deadLettered)
	if s.Accepted != int64(len(events)) || s.Gaps != 0 || s.BadSignatures != 0 || s.Malformed != 0 || s.SeqConflicts != 0 {
		t.Fatalf("external system: %+v", s)
	}
	if len(s.Accounts) != accounts {
		t.Fatalf("%d accounts seen, want %d", len(s.Accounts), accounts)
	}
	for id, a := range s.Accounts {
		if a.LastSeq != int64(perAccount) || !a.Complete() || a.Received != int64(perAccount) {
			t.Errorf("account %s: %+v", id, a)
		}
	}
	if open := st.letters(t, ""); len(open) != 0 {
		t.Fatalf("%d dead letters still open: %+v", len(open), open[0])
	}
	replayed := st.letters(t, "status=replayed")
	if int64(len(replayed)) != d.deadLettered {
		t.Fatalf("%d letters replayed, %d dead-lettered", len(replayed), d.deadLettered)
	}

	// A replay of an execution the external system already has is deduped there, not accepted twice.
	// (Retried past the simulator's random 500s.)
	for attempt := 1; st.dlAPI(t, http.MethodPost, fmt.Sprintf("/v1/deadletters/%d/replay", replayed[0].ID), nil) != http.StatusOK; attempt++ {
		if attempt == simDeadLetterTries {
			t.Fatal("second replay never got through")
		}
	}
	if s2 := st.sim.Stats(); s2.Accepted != s.Accepted || s2.Duplicates != s.Duplicates+1 {
		t.Fatalf("second replay: accepted %d -> %d, duplicates %d -> %d", s.Accepted, s2.Accepted, s.Duplicates, s2.Duplicates)
	}
}

// closeBriefly waits until the simulator has accepted `after` executions, closes it until it has
// refused a few more deliveries, and opens it again.
func closeBriefly(sim *extsim.Sim, after int64) error {
	deadline := time.Now().Add(relayTestWaitSec * time.Second)
	wait := func(cond func(extsim.Stats) bool) error {
		for !cond(sim.Stats()) {
			if time.Now().After(deadline) {
				return fmt.Errorf("second outage: timed out at %+v", sim.Stats())
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	if err := wait(func(s extsim.Stats) bool { return s.Accepted >= after }); err != nil {
		return err
	}
	_ = sim.SetMode(extsim.ModeClosed)
	closed := sim.Stats().ClosedAnswers
	if err := wait(func(s extsim.Stats) bool { return s.ClosedAnswers >= closed+5 }); err != nil {
		return err
	}
	return sim.SetMode(extsim.ModeOpen)
}

// TestPoisonExecutionRejectedThenReplayed: the external system refuses one execution with a 4xx; the
// relay answers 422 with the reason; the dispatcher dead-letters it at once; it is stored as
// rejected with the reason visible over REST and in `kawase dlq show`; the redrive leaves it alone;
// after the fix, `kawase dlq replay` delivers it.
func TestPoisonExecutionRejectedThenReplayed(t *testing.T) {
	st := startRelayStack(t, 100, extsim.Config{})
	st.redrive()
	events := executionEvents(t, 1, 5)
	poison := events[2]
	const reason = "account suspended at the counterparty"
	if err := st.sim.Refuse(extsim.Refusal{ExecutionID: poison.ID(), Reason: reason}); err != nil {
		t.Fatal(err)
	}
	d := &simDispatcher{subscriber: st.relayURL, sink: st.dlURL + "/"}
	d.run(t, events)
	if d.delivered != 4 || d.deadLettered != 1 {
		t.Fatalf("%d delivered, %d dead-lettered", d.delivered, d.deadLettered)
	}
	rejected := st.letters(t, "category=rejected")
	if len(rejected) != 1 {
		t.Fatalf("rejected letters %+v", rejected)
	}
	dl := rejected[0]
	if dl.EventID != poison.ID() || dl.ErrorCode == nil || *dl.ErrorCode != http.StatusUnprocessableEntity ||
		!strings.Contains(dl.ErrorData, reason) || dl.ErrorDest != st.relayURL {
		t.Fatalf("stored poison %+v", dl)
	}
	if s := st.sim.Stats(); s.Gaps != 1 || s.Refused != 1 {
		t.Fatalf("before the fix: %+v", s)
	}

	// kawase dlq against the real API: list and show carry the reason.
	target := apiTarget{URL: st.dlURL, Token: relayTestAdminToken}
	var out bytes.Buffer
	if err := dlqMain(context.Background(), &out, t.TempDir(), target, []string{"list", "--category", "rejected"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), poison.ID()) || !strings.Contains(out.String(), "422") {
		t.Fatalf("dlq list:\n%s", out.String())
	}
	out.Reset()
	id := strconv.FormatInt(dl.ID, 10)
	if err := dlqMain(context.Background(), &out, t.TempDir(), target, []string{"show", id}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rejected", reason, poison.ID(), "error code:", "422", "partitionkey"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dlq show lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := dlqMain(context.Background(), &out, t.TempDir(), target, []string{"show", id, "-o", "json"}); err != nil {
		t.Fatal(err)
	}
	var shown deadletters.DeadLetter
	if err := json.Unmarshal(out.Bytes(), &shown); err != nil || shown.Category != deadletters.CategoryRejected {
		t.Fatalf("dlq show -o json: %v\n%s", err, out.String())
	}

	// Replay before the fix fails and says why; the redrive never replays a rejected letter.
	if err := dlqMain(context.Background(), io.Discard, t.TempDir(), target, []string{"replay", id}); err == nil ||
		!strings.Contains(err.Error(), reason) {
		t.Fatalf("replay before the fix: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // many redrive passes at time scale 100
	if s := st.sim.Stats(); s.Refused != 2 {
		t.Fatalf("the rejected letter was replayed by someone other than the operator: refused %d", s.Refused)
	}

	st.sim.Allow(extsim.Refusal{ExecutionID: poison.ID()})
	out.Reset()
	if err := dlqMain(context.Background(), &out, t.TempDir(), target, []string{"replay", id}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "replayed dead letter "+id) {
		t.Fatalf("dlq replay:\n%s", out.String())
	}
	s := st.sim.Stats()
	if s.Accepted != 5 || s.Gaps != 0 || !s.Accounts["acct-000"].Complete() || s.Accounts["acct-000"].LastSeq != 5 {
		t.Fatalf("after the fix: %+v", s)
	}
	// Delivered by the replay, the letter can no longer be discarded: the CLI says so.
	err := dlqMain(context.Background(), io.Discard, t.TempDir(), target, []string{"discard", id, "--reason", "test"})
	if err == nil || !strings.Contains(err.Error(), "replayed, HTTP 409") {
		t.Fatalf("dlq discard of a replayed letter: %v", err)
	}
}

// TestDLQDefaultsFromDevState: with no flags and no environment, the CLI finds the API and the token
// in the data directory's dev.json, as written by a running kawase dev.
func TestDLQDefaultsFromDevState(t *testing.T) {
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"items":[]}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	b, _ := json.Marshal(devState{HTTP: srv.URL, AdminToken: "adm_from_dev_json"})
	if err := os.WriteFile(filepath.Join(dir, devStateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := dlqMain(context.Background(), &out, dir, apiTarget{}, []string{"list"}); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer adm_from_dev_json" || !strings.Contains(out.String(), "no dead letters") {
		t.Fatalf("auth %q, output %q", gotAuth, out.String())
	}
	if err := dlqMain(context.Background(), &out, t.TempDir(), apiTarget{}, []string{"list"}); err == nil {
		t.Fatal("no dev.json and no target: accepted")
	}
	if err := dlqMain(context.Background(), &out, dir, apiTarget{}, []string{"discard", "1"}); err == nil {
		t.Fatal("discard without a reason: accepted")
	}
}

// BenchmarkRelayBacklogDrain measures how fast a backlog of parked executions reaches the external
// system once it opens: 10,000 parked dead letters (100 accounts) are redriven through the relay to
// extsim at production timing (time scale 1). It reports the drain rate (executions/s from the first
// delivery to the last) and the time from opening to the first delivery, which is bounded by the
// redrive's probe backoff (here at its first step, 1 s; at most 30 s after a long outage) and the
// relay's breaker cooldown.
func BenchmarkRelayBacklogDrain(b *testing.B) {
	const accounts, perAccount = 100, 100
	var (
		delivered           int
		drain, toFirst, cpu time.Duration
		iterations          int
		posters             = 8
		breakerFailures     = 3
	)
	for range b.N {
		b.StopTimer()
		st := startRelayStack(b, 1, extsim.Config{StartClosed: true})
		events := executionEvents(b, accounts, perAccount)
		// The backlog: each execution dead-lettered by the dispatcher after the relay's 503.
		var wg sync.WaitGroup
		for w := range posters {
			wg.Go(func() {
				for i := w; i < len(events); i += posters {
					dl := events[i].Clone()
					dl.SetExtension("knativeerrordest", st.relayURL)
					dl.SetExtension("knativeerrorcode", "503")
					if s, body := postRelayEvent(st.dlURL+"/", dl); s != http.StatusNoContent {
						b.Errorf("dead letter: %d %s", s, body)
						return
					}
				}
			})
		}
		wg.Wait()
		for i := range breakerFailures { // the relay has seen the closed system: its breaker is open
			postRelayEvent(st.relayURL, events[i])
		}
		st.redrive()
		waitForRelayStack(b, "the redrive's first probe", func() bool {
			l := st.letters(b, "category=parked&pageSize=1")
			return len(l) > 0 && l[0].ReplayCount > 0
		})
		cpuBefore := processCPU(b)
		b.StartTimer()
		opened := time.Now()
		if err := st.sim.SetMode(extsim.ModeOpen); err != nil {
			b.Fatal(err)
		}
		waitForRelayStack(b, "the backlog drained", func() bool { return st.sim.Stats().Accepted == int64(len(events)) })
		b.StopTimer()
		cpu += processCPU(b) - cpuBefore
		s := st.sim.Stats()
		if s.Gaps != 0 || s.Duplicates != 0 {
			b.Fatalf("after the drain: %+v", s)
		}
		delivered += len(events)
		drain += s.LastAcceptedAt.Sub(*s.FirstAcceptedAt)
		toFirst += s.FirstAcceptedAt.Sub(opened)
		iterations++
	}
	b.ReportMetric(float64(delivered)/drain.Seconds(), "executions/s")
	b.ReportMetric(float64(toFirst.Milliseconds())/float64(iterations), "ms-to-first-delivery")
	// CPU spent by this process (deadletters, relay and extsim together) per execution delivered: a
	// figure that does not depend on what else the machine is doing.
	b.ReportMetric(float64(cpu.Microseconds())/float64(delivered), "cpu-us/execution")
}

// processCPU is the user and system CPU time this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestDLQDiscardThroughTheAPI: `kawase dlq discard` marks an open dead letter discarded, with the
// reason, over the real API; the letter is kept.
func TestDLQDiscardThroughTheAPI(t *testing.T) {
	st := startRelayStack(t, 100, extsim.Config{})
	events := executionEvents(t, 1, 1)
	if err := st.sim.Refuse(extsim.Refusal{ExecutionID: events[0].ID(), Reason: "unknown account"}); err != nil {
		t.Fatal(err)
	}
	d := &simDispatcher{subscriber: st.relayURL, sink: st.dlURL + "/"}
	d.run(t, events)
	rejected := st.letters(t, "category=rejected")
	if len(rejected) != 1 {
		t.Fatalf("rejected letters %+v", rejected)
	}
	id := strconv.FormatInt(rejected[0].ID, 10)
	var out bytes.Buffer
	target := apiTarget{URL: st.dlURL, Token: relayTestAdminToken}
	if err := dlqMain(context.Background(), &out, t.TempDir(), target, []string{"discard", id, "--reason", "booked by hand"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "discarded dead letter "+id) {
		t.Fatalf("dlq discard:\n%s", out.String())
	}
	discarded := st.letters(t, "status=discarded")
	if len(discarded) != 1 || discarded[0].DiscardReason != "booked by hand" {
		t.Fatalf("discarded letters %+v", discarded)
	}
}
