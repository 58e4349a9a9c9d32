package deadletters_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/deadletters"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const (
	adminToken = "test-admin-token"
	waitSec    = 60
)

// newService starts the service on a fresh database and serves it over real HTTP.
func newService(t *testing.T, dbURL string) (*deadletters.Service, string) {
	t.Helper()
	ctx := context.Background()
	if err := deadletters.Migrate(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	svc, err := deadletters.New(deadletters.Config{AdminToken: adminToken, TimeScale: 100}, pool,
		zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	return svc, srv.URL
}

// destination is a CloudEvents subscriber whose answer the test sets; it records what it took.
type destination struct {
	url    string
	status atomic.Int32
	mu     sync.Mutex
	got    []cloudevents.Event
	calls  atomic.Int64
	// failOnce makes the first delivery of these event ids fail with a 500; failAlways every one
	// with a 409.
	failOnce, failAlways map[string]bool
}

func newDestination(t *testing.T, status int) *destination {
	t.Helper()
	d := &destination{}
	d.status.Store(int32(status))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.calls.Add(1)
		e, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		status := int(d.status.Load())
		d.mu.Lock()
		if d.failOnce[e.ID()] {
			delete(d.failOnce, e.ID())
			status = http.StatusInternalServerError
		}
		if d.failAlways[e.ID()] {
			status = http.StatusConflict
		}
		d.mu.Unlock()
		if status >= 200 && status < 300 {
			d.mu.Lock()
			d.got = append(d.got, *e)
			d.mu.Unlock()
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"answer":%d}`, status)
	}))
	t.Cleanup(srv.Close)
	d.url = srv.URL + "/"
	return d
}

func (d *destination) received() []cloudevents.Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.got)
}

// original is an event as a producer published it.
func original(t *testing.T, id, key string) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType("kawase.test.v1")
	e.SetSource("/kawase/test")
	e.SetTime(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC))
	e.SetExtension("partitionkey", key)
	if err := e.SetData("application/json", map[string]any{"id": id, "n": 1}); err != nil {
		t.Fatal(err)
	}
	return e
}

// deadLetter posts e to the service as the KafkaSource delivers a dead letter: the original event
// plus Knative's error extensions. code 0 means the destination never answered.
func deadLetter(t *testing.T, svcURL string, e cloudevents.Event, dest string, code int, answer string, offset int) {
	t.Helper()
	e = e.Clone()
	e.SetExtension("knativeerrordest", dest)
	if code != 0 {
		e.SetExtension("knativeerrorcode", strconv.Itoa(code))
	}
	if answer != "" {
		e.SetExtension("knativeerrordata", base64.StdEncoding.EncodeToString([]byte(answer)))
	}
	e.SetExtension("knativekafkapartition", "3")
	e.SetExtension("knativekafkaoffset", strconv.Itoa(offset))
	req, err := cehttp.NewHTTPRequestFromEvent(context.Background(), svcURL+"/", e)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("dead letter %s: %d", e.ID(), resp.StatusCode)
	}
}

// api calls the REST API with the admin token and decodes the answer into out (when not nil).
func api(t *testing.T, method, url string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set(deadletters.HeaderActor, "tester")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

func list(t *testing.T, svcURL, query string) []deadletters.DeadLetter {
	t.Helper()
	var page deadletters.ListPage
	if code := api(t, http.MethodGet, svcURL+"/v1/deadletters?"+query, nil, &page); code != http.StatusOK {
		t.Fatalf("list %s: %d", query, code)
	}
	return page.Items
}

func TestStoresEveryDeadLetterOnce(t *testing.T) {
	_, svcURL := newService(t, pgtest.URL(t))
	dest := "http://relay.kawase.svc.cluster.local/"
	e := original(t, "x-1", "acct-1")
	deadLetter(t, svcURL, e, dest, 503, `{"code":"external_unavailable"}`, 17)
	deadLetter(t, svcURL, e, dest, 503, `{"code":"breaker_open"}`, 17) // redelivered: same letter
	deadLetter(t, svcURL, original(t, "x-2", "acct-1"), dest, 422, `{"detail":"unknown counterparty"}`, 18)
	deadLetter(t, svcURL, original(t, "x-3", "acct-2"), dest, 0, "", 19)
	deadLetter(t, svcURL, original(t, "x-4", "acct-2"), dest, 429, "", 20)
	// A malformed rate dead-lettered by the ratekeeper's source: another type and destination.
	rate := cloudevents.NewEvent()
	rate.SetID("rate:bad")
	rate.SetType("kawase.rate.v1")
	rate.SetSource("/kawase/feeder")
	_ = rate.SetData("application/json", []byte(`{"pair":"XXX_YYY"`))
	deadLetter(t, svcURL, rate, "http://ratekeeper.kawase.svc.cluster.local/", 400, "bad pair", 5)

	all := list(t, svcURL, "")
	if len(all) != 5 {
		t.Fatalf("stored %d dead letters, want 5: %+v", len(all), all)
	}
	first := all[0]
	if first.EventID != "x-1" || first.FailureCount != 2 || first.Category != deadletters.CategoryParked ||
		*first.ErrorCode != 503 || first.ErrorData != `{"code":"breaker_open"}` || first.ErrorDest != dest ||
		*first.KafkaPartition != 3 || *first.KafkaOffset != 17 || first.LastFailedAt.Before(first.FirstFailedAt) {
		t.Fatalf("first letter %+v", first)
	}
	wantCategory := map[string]string{"x-2": "rejected", "x-3": "parked", "x-4": "parked", "rate:bad": "rejected"}
	for _, d := range all[1:] {
		if d.Category != wantCategory[d.EventID] {
			t.Errorf("%s: category %s, want %s", d.EventID, d.Category, wantCategory[d.EventID])
		}
	}
	if got := list(t, svcURL, "category=rejected&type=kawase.test.v1"); len(got) != 1 || got[0].EventID != "x-2" {
		t.Fatalf("filtered list %+v", got)
	}
	if got := list(t, svcURL, "pageSize=2"); len(got) != 2 {
		t.Fatalf("page of 2: %d", len(got))
	}
	var page deadletters.ListPage
	api(t, http.MethodGet, svcURL+"/v1/deadletters?pageSize=2", nil, &page)
	if next := list(t, svcURL, fmt.Sprintf("pageSize=2&after=%d", page.NextAfter)); len(next) != 2 || next[0].ID <= page.NextAfter {
		t.Fatalf("second page %+v after %d", next, page.NextAfter)
	}
	if got := list(t, svcURL, "since=1h"); len(got) != 5 {
		t.Fatalf("since=1h: %d", len(got))
	}

	var shown deadletters.DeadLetter
	if code := api(t, http.MethodGet, fmt.Sprintf("%s/v1/deadletters/%d", svcURL, all[1].ID), nil, &shown); code != http.StatusOK {
		t.Fatalf("show: %d", code)
	}
	if shown.ErrorData != `{"detail":"unknown counterparty"}` || shown.Event == nil ||
		shown.Event.Attributes["partitionkey"] != "acct-1" || shown.Event.Attributes["id"] != "x-2" ||
		!strings.Contains(string(shown.Event.Data), `"id":"x-2"`) {
		t.Fatalf("shown %+v event %+v", shown, shown.Event)
	}
	if _, ok := shown.Event.Attributes["knativeerrorcode"]; ok {
		t.Fatal("Knative's error extensions are kept with the original event")
	}
}

func TestRESTNeedsTheAdminToken(t *testing.T) {
	_, svcURL := newService(t, pgtest.URL(t))
	for _, auth := range []string{"", "Bearer wrong", adminToken} {
		req, _ := http.NewRequest(http.MethodGet, svcURL+"/v1/deadletters", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d", auth, resp.StatusCode)
		}
	}
}

// TestUnroutedRequestsGetProblems: an unknown path or a method a path does not take is answered as
// problem+json (404 not_found, 405 method_not_allowed with Allow), not net/http's plain text.
func TestUnroutedRequestsGetProblems(t *testing.T) {
	_, svcURL := newService(t, pgtest.URL(t))
	for _, c := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{http.MethodGet, "/v1/deadletters/x/nope", http.StatusNotFound, "not_found", ""},
		{http.MethodPut, "/v1/deadletters/x", http.StatusMethodNotAllowed, "method_not_allowed", "GET, HEAD, DELETE"},
		{http.MethodGet, "/", http.StatusMethodNotAllowed, "method_not_allowed", "POST"},
	} {
		req, _ := http.NewRequest(c.method, svcURL+c.path, nil)
		req.Header.Set("Authorization", adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != c.status || p.Code != c.code || resp.Header.Get("Allow") != c.allow ||
			resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: %d %q Allow %q (%s)", c.method, c.path, resp.StatusCode, p.Code, resp.Header.Get("Allow"), resp.Header.Get("Content-Type"))
		}
	}
}

func TestReplayAndDiscard(t *testing.T) {
	_, svcURL := newService(t, pgtest.URL(t))
	dst := newDestination(t, http.StatusServiceUnavailable)
	e := original(t, "x-1", "acct-1")
	deadLetter(t, svcURL, e, dst.url, 422, "refused", 1)
	deadLetter(t, svcURL, original(t, "x-2", "acct-1"), dst.url, 422, "refused", 2)
	items := list(t, svcURL, "")
	one := fmt.Sprintf("%s/v1/deadletters/%d", svcURL, items[0].ID)

	// Destination still down: 502, the letter stays open, now parked, with the new error.
	var problem map[string]any
	if code := api(t, http.MethodPost, one+"/replay", nil, &problem); code != http.StatusBadGateway ||
		problem["category"] != "parked" || !strings.Contains(fmt.Sprint(problem["detail"]), "503") {
		t.Fatalf("replay to a down destination: %d %v", code, problem)
	}
	var d deadletters.DeadLetter
	api(t, http.MethodGet, one, nil, &d)
	if d.Status != deadletters.StatusOpen || d.Category != deadletters.CategoryParked || *d.LastReplayCode != 503 ||
		d.ReplayCount != 1 || len(d.History) != 1 || d.History[0].Actor != "tester" {
		t.Fatalf("after a failed replay %+v", d)
	}

	// Destination up: the same event (id, type, source, extensions, data) arrives; marked replayed.
	dst.status.Store(http.StatusAccepted)
	if code := api(t, http.MethodPost, one+"/replay", nil, &d); code != http.StatusOK || d.Status != deadletters.StatusReplayed ||
		d.ReplayedBy != "tester" {
		t.Fatalf("replay: %d %+v", code, d)
	}
	got := dst.received()
	if len(got) != 1 || got[0].ID() != e.ID() || got[0].Type() != e.Type() || got[0].Source() != e.Source() ||
		!got[0].Time().Equal(e.Time()) || got[0].Extensions()["partitionkey"] != "acct-1" ||
		!bytes.Equal(got[0].Data(), e.Data()) {
		t.Fatalf("replayed event %v, want %v", got, e)
	}
	if _, ok := got[0].Extensions()["knativeerrordest"]; ok {
		t.Fatal("the replayed event carries Knative's error extensions")
	}

	// Discard needs a reason, records who and why, and keeps the letter.
	two := fmt.Sprintf("%s/v1/deadletters/%d", svcURL, items[1].ID)
	if code := api(t, http.MethodDelete, two, nil, nil); code != http.StatusBadRequest {
		t.Fatalf("discard without reason: %d", code)
	}
	if code := api(t, http.MethodDelete, two, map[string]string{"reason": "booked by hand"}, &d); code != http.StatusOK ||
		d.Status != deadletters.StatusDiscarded || d.DiscardedBy != "tester" || d.DiscardReason != "booked by hand" ||
		d.DiscardedAt == nil {
		t.Fatalf("discard: %d %+v", code, d)
	}
	if code := api(t, http.MethodPost, two+"/replay", nil, nil); code != http.StatusConflict {
		t.Fatalf("replay of a discarded letter: %d", code)
	}
	// A replayed letter was delivered: it cannot be discarded after the fact.
	if code := api(t, http.MethodDelete, one, map[string]string{"reason": "too late"}, nil); code != http.StatusConflict {
		t.Fatalf("discard of a replayed letter: %d", code)
	}
	if got := list(t, svcURL, "status=discarded"); len(got) != 1 || got[0].ID != items[1].ID {
		t.Fatalf("discarded list %+v", got)
	}
	if got := list(t, svcURL, ""); len(got) != 0 {
		t.Fatalf("open letters left: %+v", got)
	}
	if code := api(t, http.MethodGet, svcURL+"/v1/deadletters/999999", nil, nil); code != http.StatusNotFound {
		t.Fatalf("missing letter: %d", code)
	}
}

func TestReplayByFilter(t *testing.T) {
	_, svcURL := newService(t, pgtest.URL(t))
	up := newDestination(t, http.StatusOK)
	refusing := newDestination(t, http.StatusBadRequest)
	for i := range 6 {
		deadLetter(t, svcURL, original(t, fmt.Sprintf("up-%d", i), "k"), up.url, 422, "", i)
	}
	deadLetter(t, svcURL, original(t, "no-1", "k"), refusing.url, 503, "", 10)
	var rep deadletters.ReplayReport
	if code := api(t, http.MethodPost, svcURL+"/v1/deadletters/replay", deadletters.ReplayFilter{Category: "rejected"}, &rep); code != http.StatusOK ||
		rep.Matched != 6 || rep.Replayed != 6 {
		t.Fatalf("replay rejected: %d %+v", code, rep)
	}
	var ids []string
	for _, e := range up.received() {
		ids = append(ids, e.ID())
	}
	if want := []string{"up-0", "up-1", "up-2", "up-3", "up-4", "up-5"}; !slices.Equal(ids, want) {
		t.Fatalf("one key's letters arrived as %v, want %v", ids, want)
	}
	if code := api(t, http.MethodPost, svcURL+"/v1/deadletters/replay", nil, &rep); code != http.StatusOK ||
		rep.Matched != 1 || rep.Failed != 1 || rep.Failures[0].Category != "rejected" {
		t.Fatalf("replay the rest: %d %+v", code, rep)
	}
}

// TestRedrive: parked letters are replayed automatically, oldest first per key and exactly once,
// once their destination answers again; rejected letters are left for a person. Two replicas run the
// redrive at once; the lock makes one of them do it.
func TestRedrive(t *testing.T) {
	dbURL := pgtest.URL(t)
	svc, svcURL := newService(t, dbURL)
	svc2, _ := newService(t, dbURL)
	dst := newDestination(t, http.StatusServiceUnavailable)
	const keys, perKey = 8, 25
	for n := range perKey {
		for k := range keys {
			deadLetter(t, svcURL, original(t, fmt.Sprintf("k%d-%03d", k, n), fmt.Sprintf("k%d", k)), dst.url, 503, "closed", n)
		}
	}
	deadLetter(t, svcURL, original(t, "poison", "k0"), dst.url, 422, "never", 999)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range []*deadletters.Service{svc, svc2} {
		wg.Go(func() { _ = s.Run(ctx) })
	}
	defer func() { cancel(); wg.Wait() }()

	deadline := time.Now().Add(waitSec * time.Second)
	for dst.calls.Load() < 3 { // probes while it is down
		if time.Now().After(deadline) {
			t.Fatal("the redrive never probed the destination")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(dst.received()); n != 0 {
		t.Fatalf("%d events taken by a down destination", n)
	}
	dst.status.Store(http.StatusOK)
	for len(list(t, svcURL, "category=parked")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("parked letters left: %d", len(list(t, svcURL, "category=parked")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := dst.received()
	if len(got) != keys*perKey {
		t.Fatalf("destination took %d events, want %d exactly once each", len(got), keys*perKey)
	}
	seen := map[string]bool{}
	last := map[string]string{}
	for _, e := range got {
		if seen[e.ID()] {
			t.Fatalf("%s replayed twice", e.ID())
		}
		seen[e.ID()] = true
		key := fmt.Sprint(e.Extensions()["partitionkey"])
		if e.ID() < last[key] {
			t.Fatalf("key %s: %s after %s", key, e.ID(), last[key])
		}
		last[key] = e.ID()
	}
	if rej := list(t, svcURL, "category=rejected"); len(rej) != 1 || rej[0].EventID != "poison" || rej[0].ReplayCount != 0 {
		t.Fatalf("the rejected letter was touched by the redrive: %+v", rej)
	}
	if replayed := list(t, svcURL, "status=replayed&pageSize=500"); len(replayed) != keys*perKey || replayed[0].ReplayedBy != "redrive" {
		t.Fatalf("%d letters marked replayed", len(replayed))
	}
}

// TestRedriveThroughSporadicFailures: a destination that is up but fails now and then (a random 5xx)
// does not stop the redrive; the key of a failed letter waits for the next pass, so every key's
// events still arrive in order, each exactly once. The oldest letter, which the destination always
// answers 409 (retryable), stays parked without keeping the others from being delivered.
func TestRedriveThroughSporadicFailures(t *testing.T) {
	svc, svcURL := newService(t, pgtest.URL(t))
	dst := newDestination(t, http.StatusOK)
	dst.failOnce, dst.failAlways = map[string]bool{}, map[string]bool{"stuck": true}
	deadLetter(t, svcURL, original(t, "stuck", "stuck-key"), dst.url, 409, "conflict", 0)
	const keys, perKey = 6, 30
	for n := range perKey {
		for k := range keys {
			id := fmt.Sprintf("k%d-%03d", k, n)
			if (n+k)%7 == 3 {
				dst.failOnce[id] = true
			}
			deadLetter(t, svcURL, original(t, id, fmt.Sprintf("k%d", k)), dst.url, 503, "closed", n)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = svc.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(waitSec * time.Second)
	for len(list(t, svcURL, "category=parked")) > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("parked letters left: %d", len(list(t, svcURL, "category=parked")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := dst.received()
	if len(got) != keys*perKey {
		t.Fatalf("destination took %d events, want %d", len(got), keys*perKey)
	}
	if left := list(t, svcURL, "category=parked"); len(left) != 1 || left[0].EventID != "stuck" || left[0].LastReplayCode == nil ||
		*left[0].LastReplayCode != http.StatusConflict {
		t.Fatalf("parked: %+v", left)
	}
	last := map[string]string{}
	for _, e := range got {
		key := fmt.Sprint(e.Extensions()["partitionkey"])
		if e.ID() <= last[key] {
			t.Fatalf("key %s: %s after %s", key, e.ID(), last[key])
		}
		last[key] = e.ID()
	}
	if len(dst.failOnce) != 0 {
		t.Fatalf("failures never met: %v", dst.failOnce)
	}
}
