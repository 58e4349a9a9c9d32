package rates_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/functions/rates"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

const testTimeout = 60 * time.Second

// ratesEnv is a rates service tailing the embedded broker over TCP, behind a real HTTP server with
// the readiness endpoints kawase serve mounts.
type ratesEnv struct {
	svc     *rates.Service
	reg     *prometheus.Registry
	srv     *httptest.Server
	brokers []string
	writer  *kafka.Writer
	started bool
	cfg     rates.Config
	candles ratesv1.CandleServiceClient
	clock   *clock
	// sendBuffer, when set, fixes the send buffer of accepted connections (no autotuning), so a
	// client that stops reading blocks the server's writes quickly.
	sendBuffer int
	// wrap, when set, stands in front of the service's handler (to break its streams on purpose).
	wrap func(http.Handler) http.Handler
}

type smallBufferListener struct {
	net.Listener
	bytes int
}

func (l smallBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.bytes)
	}
	return c, err
}

// clock is the service's time, moved only by the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newRatesEnv starts a broker; the service starts with start (so tests can publish first).
func newRatesEnv(t *testing.T, cfg rates.Config, candles ratesv1.CandleServiceClient) *ratesEnv {
	t.Helper()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	brokers := []string{b.Addr()}
	if err := broker.EnsureTopics(ctx, brokers, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
	w := cekafka.NewWriter(brokers, eventing.TopicRates)
	t.Cleanup(func() { w.Close() })
	cfg.Brokers = brokers
	clk := &clock{t: time.Now()}
	if cfg.Now == nil {
		cfg.Now = clk.Now
	}
	return &ratesEnv{brokers: brokers, writer: w, cfg: cfg, candles: candles, clock: clk}
}

func startRates(t *testing.T, cfg rates.Config, candles ratesv1.CandleServiceClient) *ratesEnv {
	t.Helper()
	env := newRatesEnv(t, cfg, candles)
	env.start(t)
	return env
}

func (env *ratesEnv) start(t *testing.T) {
	t.Helper()
	env.reg = prometheus.NewRegistry()
	svc, err := rates.New(env.cfg, env.candles, zap.NewNop().Sugar(), env.reg)
	if err != nil {
		t.Fatal(err)
	}
	env.svc = svc
	health := observe.NewHealth()
	health.AddCheck("rates", svc.Ready)
	mux := http.NewServeMux()
	observe.Mount(mux, env.reg, health)
	if env.wrap != nil {
		mux.Handle("/", env.wrap(svc.Handler()))
	} else {
		mux.Handle("/", svc.Handler())
	}
	env.srv = httptest.NewUnstartedServer(mux)
	// As observe.Serve does: HTTP/1.1, and HTTP/2 without TLS (h2c).
	env.srv.Config.Protocols = new(http.Protocols)
	env.srv.Config.Protocols.SetHTTP1(true)
	env.srv.Config.Protocols.SetUnencryptedHTTP2(true)
	if env.sendBuffer > 0 {
		env.srv.Listener = smallBufferListener{Listener: env.srv.Listener, bytes: env.sendBuffer}
	}
	env.srv.Start()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		env.srv.CloseClientConnections()
		env.srv.Close()
		if err := <-done; err != nil {
			t.Errorf("rates run: %v", err)
		}
	})
}

// quote is provider quote i of pair: prices rise with i (the bid by i pips), one second apart.
func quote(pair fx.Pair, i int, epoch int64) eventing.RateV1 {
	spec, err := fx.Lookup(pair)
	if err != nil {
		panic(err)
	}
	pip := decimal.New(1, -spec.Precision)
	bid := spec.ReferenceMid.Add(pip.Mul(decimal.NewFromInt(int64(i))))
	base := time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)
	return eventing.RateV1{Pair: pair, Bid: bid, Ask: bid.Add(pip.Mul(decimal.NewFromInt(2))),
		ProviderTime: base.Add(time.Duration(i) * time.Second), QuoteID: strconv.Itoa(i), Session: "test",
		MsgSeqNum: i + 1, Epoch: epoch, Seq: int64(i)}
}

// moveEveryPair applies a new rate of every pair every interval, straight to the service, until ctx
// ends.
func (env *ratesEnv) moveEveryPair(ctx context.Context, interval time.Duration) {
	for i := 1; ctx.Err() == nil; i++ {
		for _, spec := range fx.Pairs() {
			r := quote(spec.Pair, i%500, 1)
			r.QuoteID, r.ProviderTime = strconv.Itoa(i), time.Now()
			env.svc.Apply(&r)
		}
		time.Sleep(interval)
	}
}

func (env *ratesEnv) publish(t testing.TB, rs ...eventing.RateV1) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := env.tryPublish(ctx, rs...); err != nil {
		t.Fatal(err)
	}
}

// tryPublish publishes rates received now (by the service's clock) to the rates topic.
func (env *ratesEnv) tryPublish(ctx context.Context, rs ...eventing.RateV1) error {
	events := make([]cloudevents.Event, 0, len(rs))
	for _, r := range rs {
		r.ReceivedAt = env.cfg.Now()
		e, err := eventing.NewEvent(eventing.TypeRate, r.EventID(), &r)
		if err != nil {
			return err
		}
		events = append(events, e)
	}
	return cekafka.Publish(ctx, env.writer, events...)
}

// eventually polls cond every 20 ms until it holds or the test timeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

// get is a GET with header's name-value pairs.
func get(t *testing.T, url string, header ...string) response {
	t.Helper()
	return getWith(t, http.DefaultClient, url, header...)
}

// getWith is get through hc.
func getWith(t *testing.T, hc *http.Client, url string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1]) // a name given twice makes two header lines
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

type rateBody struct {
	Pair      string `json:"pair"`
	Bid       string `json:"bid"`
	Ask       string `json:"ask"`
	Spread    string `json:"spread"`
	Time      string `json:"time"`
	Tradeable bool   `json:"tradeable"`
}

func decodeList(t *testing.T, body string) []rateBody {
	t.Helper()
	var v struct{ Rates []rateBody }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return v.Rates
}

func decodeRate(t *testing.T, body string) rateBody {
	t.Helper()
	var v rateBody
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return v
}

// problemCode returns the code of a problem+json answer, or "" when it is not one.
func problemCode(r response) string {
	if !strings.HasPrefix(r.header.Get("Content-Type"), "application/problem+json") {
		return ""
	}
	var p struct{ Code string }
	_ = json.Unmarshal([]byte(r.body), &p)
	return p.Code
}

// metricValue returns the value of a counter or gauge, by name and labels (nil: all series).
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := metrictest.Value(reg, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustf(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, args...)
	}
}
