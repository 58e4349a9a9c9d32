package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/signature"
	"github.com/kawase-fx/kawase/functions/relay"
	"github.com/kawase-fx/kawase/functions/relay/extsim"
)

const (
	secretNew = "relay-test-secret-new-0123456789"
	secretOld = "relay-test-secret-old-0123456789"
	waitSec   = 20
)

// execution returns a valid execution event for account acct with sequence number seq.
func execution(t testing.TB, acct string, seq int64) cloudevents.Event {
	t.Helper()
	x := &eventing.TradeExecutedV1{ExecutionID: fmt.Sprintf("x-%s-%d", acct, seq), AccountID: acct, AccountSeq: seq,
		OrderID: fmt.Sprintf("o-%s-%d", acct, seq), Pair: "USD_JPY", Side: eventing.SideBuy,
		Units: decimal.NewFromInt(1000), Price: decimal.RequireFromString("151.425"), Currency: "JPY",
		Reason: "order", ExecutedAt: time.Now().UTC()}
	e, err := eventing.NewEvent(eventing.TypeTradeExecuted, x.ExecutionID, x)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

type harness struct {
	sim      *extsim.Sim
	simURL   string
	relayURL string
	relay    *relay.Relay
}

func start(t testing.TB, simCfg extsim.Config, relayCfg relay.Config) *harness {
	t.Helper()
	if simCfg.Secrets == nil {
		simCfg.Secrets = []string{secretNew}
	}
	sim, err := extsim.New(simCfg)
	if err != nil {
		t.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	t.Cleanup(simSrv.Close)
	if relayCfg.ExternalURL == "" {
		relayCfg.ExternalURL = simSrv.URL + extsim.DeliveryPath
	}
	if relayCfg.Secrets == nil {
		relayCfg.Secrets = []string{secretNew}
	}
	r, err := relay.New(relayCfg, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	relaySrv := httptest.NewServer(r)
	t.Cleanup(relaySrv.Close)
	return &harness{sim: sim, simURL: simSrv.URL, relayURL: relaySrv.URL, relay: r}
}

// post delivers e to the relay as Knative's dispatcher does (binary mode) and returns the status and
// the problem body.
func post(t testing.TB, url string, e cloudevents.Event) (int, map[string]any) {
	t.Helper()
	req, err := cehttp.NewHTTPRequestFromEvent(context.Background(), url, e)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body
}

func TestDeliversSignedExecutionOnce(t *testing.T) {
	h := start(t, extsim.Config{}, relay.Config{})
	e := execution(t, "acct-1", 1)
	if code, body := post(t, h.relayURL, e); code != http.StatusNoContent {
		t.Fatalf("delivery: %d %v", code, body)
	}
	if code, body := post(t, h.relayURL, e); code != http.StatusNoContent {
		t.Fatalf("redelivery: %d %v", code, body)
	}
	st := h.sim.Stats()
	if st.Accepted != 1 || st.Duplicates != 1 || st.BadSignatures != 0 || st.Malformed != 0 {
		t.Fatalf("stats %+v", st)
	}
	if a := st.Accounts["acct-1"]; a.LastSeq != 1 || !a.Complete() {
		t.Fatalf("account %+v", a)
	}
}

// TestOutcomes checks every row of the relay's answer table against a real external endpoint.
func TestOutcomes(t *testing.T) {
	h := start(t, extsim.Config{}, relay.Config{})

	// Refused by the external system: 422 with its reason, for the dead-letter store.
	poison := execution(t, "acct-p", 1)
	if err := h.sim.Refuse(extsim.Refusal{ExecutionID: poison.ID(), Reason: "unknown counterparty"}); err != nil {
		t.Fatal(err)
	}
	code, body := post(t, h.relayURL, poison)
	if code != http.StatusUnprocessableEntity || body["code"] != "external_rejected" ||
		!strings.Contains(fmt.Sprint(body["detail"]), "unknown counterparty") || body["externalStatus"] != float64(422) {
		t.Fatalf("refused: %d %v", code, body)
	}

	// Closed: 503, retryable.
	if err := h.sim.SetMode(extsim.ModeClosed); err != nil {
		t.Fatal(err)
	}
	code, body = post(t, h.relayURL, execution(t, "acct-c", 1))
	if code != http.StatusServiceUnavailable || body["code"] != "external_unavailable" {
		t.Fatalf("closed: %d %v", code, body)
	}

	// Not a valid execution: 422; not a CloudEvent: 400.
	bad := execution(t, "acct-b", 1)
	_ = bad.SetData(eventing.ContentTypeJSON, []byte(`{"executionId":"x"}`))
	if code, body := post(t, h.relayURL, bad); code != http.StatusUnprocessableEntity || body["code"] != "invalid_event" {
		t.Fatalf("invalid: %d %v", code, body)
	}
	resp, err := http.Post(h.relayURL, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("not a CloudEvent: %d", resp.StatusCode)
	}
}

func TestConnectionRefusedAndTimeoutAreRetryable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String() + "/v1/executions"
	ln.Close()
	h := start(t, extsim.Config{}, relay.Config{ExternalURL: deadURL})
	if code, body := post(t, h.relayURL, execution(t, "a", 1)); code != http.StatusServiceUnavailable ||
		body["code"] != "external_unavailable" {
		t.Fatalf("connection refused: %d %v", code, body)
	}

	slow := start(t, extsim.Config{SlowPercent: 100, SlowDelay: 500 * time.Millisecond},
		relay.Config{ExternalTimeout: 100 * time.Millisecond})
	if code, body := post(t, slow.relayURL, execution(t, "a", 1)); code != http.StatusServiceUnavailable ||
		body["code"] != "external_unavailable" || !strings.Contains(fmt.Sprint(body["detail"]), "deadline") {
		t.Fatalf("timeout: %d %v", code, body)
	}
}

// TestSignaturesRefusedByExtsim sends tampered, stale and wrongly keyed deliveries straight to the
// simulator over HTTP, and checks a rotation through the relay.
func TestSignaturesRefusedByExtsim(t *testing.T) {
	h := start(t, extsim.Config{Secrets: []string{secretNew}, Tolerance: time.Minute}, relay.Config{})
	body := []byte(`{"executionId":"x-1","accountId":"a","accountSeq":1}`)
	good, _ := signature.NewSigner([]string{secretNew})
	wrong, _ := signature.NewSigner([]string{"someone-elses-secret-0123456789"})
	now := time.Now()
	send := func(sig string, b []byte) int {
		req, _ := http.NewRequest(http.MethodPost, h.simURL+extsim.DeliveryPath, bytes.NewReader(b))
		req.Header.Set(signature.HeaderSignature, sig)
		req.Header.Set(signature.HeaderIdempotencyKey, "x-1")
		req.Header.Set(signature.HeaderAccountID, "a")
		req.Header.Set(signature.HeaderAccountSeq, "1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tampered := bytes.Replace(body, []byte(`"accountSeq":1`), []byte(`"accountSeq":2`), 1)
	cases := map[string]int{
		"tampered body": send(good.Sign(now, body), tampered),
		"stale":         send(good.Sign(now.Add(-2*time.Minute), body), body),
		"wrong secret":  send(wrong.Sign(now, body), body),
		"unsigned":      send("", body),
	}
	for name, code := range cases {
		if code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	if st := h.sim.Stats(); st.BadSignatures != int64(len(cases)) || st.Accepted != 0 {
		t.Fatalf("stats after bad signatures: %+v", st)
	}
	if code := send(good.Sign(now, body), body); code != http.StatusOK {
		t.Fatalf("good signature: %d", code)
	}
}

func TestRotationWithTwoSecrets(t *testing.T) {
	// The relay signs with the new and the old secret; a receiver holding either accepts.
	for i, recv := range [][]string{{secretOld}, {secretNew}} {
		h := start(t, extsim.Config{Secrets: recv}, relay.Config{Secrets: []string{secretNew, secretOld}})
		if code, body := post(t, h.relayURL, execution(t, "a", 1)); code != http.StatusNoContent {
			t.Fatalf("receiver %d: %d %v", i, code, body)
		}
	}
	// Once the relay has dropped the old secret, a receiver still on it refuses: 401 from the
	// external system is retryable (503), so the events are parked rather than rejected.
	h := start(t, extsim.Config{Secrets: []string{secretOld}}, relay.Config{Secrets: []string{secretNew}})
	if code, body := post(t, h.relayURL, execution(t, "a", 1)); code != http.StatusServiceUnavailable ||
		!strings.Contains(fmt.Sprint(body["detail"]), "401") {
		t.Fatalf("old-only receiver: %d %v", code, body)
	}
	if st := h.sim.Stats(); st.BadSignatures != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCircuitBreaker: after three failures the relay answers 503 without calling; after the
// cooldown one delivery probes; once the external system is open the probe closes the breaker.
func TestCircuitBreaker(t *testing.T) {
	// TimeScale 10: cooldowns of 50 ms doubling to 500 ms.
	h := start(t, extsim.Config{StartClosed: true}, relay.Config{TimeScale: 10})
	for i := 1; i <= 3; i++ {
		if code, body := post(t, h.relayURL, execution(t, "a", int64(i))); body["code"] != "external_unavailable" {
			t.Fatalf("attempt %d: %d %v", i, code, body)
		}
	}
	calls := h.sim.Stats().Requests
	code, body := post(t, h.relayURL, execution(t, "a", 4))
	if code != http.StatusServiceUnavailable || body["code"] != "breaker_open" {
		t.Fatalf("breaker: %d %v", code, body)
	}
	if got := h.sim.Stats().Requests; got != calls {
		t.Fatalf("the open breaker called the external system (%d -> %d)", calls, got)
	}
	// After the cooldown, one probe reaches the (still closed) system and fails: open again.
	deadline := time.Now().Add(waitSec * time.Second)
	for h.sim.Stats().Requests == calls {
		if time.Now().After(deadline) {
			t.Fatal("the breaker never probed")
		}
		time.Sleep(20 * time.Millisecond)
		post(t, h.relayURL, execution(t, "a", 4))
	}
	if code, body := post(t, h.relayURL, execution(t, "a", 4)); body["code"] != "breaker_open" {
		t.Fatalf("after a failed probe: %d %v", code, body)
	}
	// Open the system: a later probe succeeds and the breaker closes.
	if err := h.sim.SetMode(extsim.ModeOpen); err != nil {
		t.Fatal(err)
	}
	for seq := int64(1); seq <= 4; {
		if time.Now().After(deadline) {
			t.Fatal("the breaker never closed")
		}
		code, body := post(t, h.relayURL, execution(t, "a", seq))
		switch {
		case code == http.StatusNoContent:
			seq++
		case body["code"] == "breaker_open":
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("while reopening: %d %v", code, body)
		}
	}
	if st := h.sim.Stats(); st.Accepted != 4 || st.Gaps != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// BenchmarkRelayDeliver measures the relay's live path: CloudEvents POSTed to it over HTTP (as the
// dispatcher does, 12 partitions in parallel) and forwarded, signed, to extsim over HTTP.
func BenchmarkRelayDeliver(b *testing.B) {
	const partitions = 12
	h := start(b, extsim.Config{}, relay.Config{})
	events := make([]cloudevents.Event, b.N)
	for i := range events {
		events[i] = execution(b, fmt.Sprintf("acct-%d", i%partitions), int64(i/partitions+1))
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: partitions}}
	b.ResetTimer()
	var wg sync.WaitGroup
	for p := range partitions {
		wg.Go(func() {
			for i := p; i < len(events); i += partitions {
				req, err := cehttp.NewHTTPRequestFromEvent(context.Background(), h.relayURL, events[i])
				if err != nil {
					b.Error(err)
					return
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if st := h.sim.Stats(); st.Accepted != int64(b.N) || st.Gaps != 0 {
		b.Fatalf("stats %+v", st)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "executions/s")
}
