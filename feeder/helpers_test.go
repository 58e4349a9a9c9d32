package feeder

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/feeder/fixsim"
)

// Test credentials of the simulator.
const (
	testUser     = "kawase"
	testPassword = "s3cret"
	// waitPollMs is how often test helpers look again.
	waitPollMs = 20
	// tailReadTimeoutMs bounds one partition read while tailing the topic.
	tailReadTimeoutMs = 200
)

// startBroker starts the embedded Kafka broker with kawase's topics.
func startBroker(t testing.TB) string {
	t.Helper()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{Port: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := broker.EnsureTopics(ctx, []string{b.Addr()}, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
	return b.Addr()
}

func startSim(t testing.TB, cfg fixsim.Config) *fixsim.Sim {
	t.Helper()
	if cfg.Username == "" {
		cfg.Username, cfg.Password = testUser, testPassword
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.New(testLogCore(t))
	}
	s, err := fixsim.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func allPairs() []fx.Pair {
	var out []fx.Pair
	for _, p := range fx.Pairs() {
		out = append(out, p.Pair)
	}
	return out
}

// testLogCore writes info and above to the test's log (shown for failed tests and with -v);
// benchmarks, whose log is always printed, get warnings only.
func testLogCore(t testing.TB) zapcore.Core {
	level := zap.InfoLevel
	if _, bench := t.(*testing.B); bench {
		level = zap.WarnLevel
	}
	return zaptest.NewLogger(t, zaptest.Level(level)).Core()
}

// soloElector makes its replica leader at once, every term with the next epoch and a lease that
// only Resign ends.
type soloElector struct{ epoch atomic.Int64 }

// Campaign returns a lease valid for a day.
func (e *soloElector) Campaign(context.Context) (*Lease, error) {
	l := newLease(nil)
	l.epoch.Store(e.epoch.Add(1))
	l.prove(time.Now(), 24*time.Hour)
	return l, nil
}

// runningFeeder is a feeder running in the test's process.
type runningFeeder struct {
	f       *Feeder
	reg     *prometheus.Registry
	logs    *observer.ObservedLogs
	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

// startFeeder runs a feeder until the test ends; cfg gets the sim's address and credentials unless set.
func startFeeder(t testing.TB, cfg Config) *runningFeeder {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	if cfg.Logger == nil {
		cfg.Logger = zap.New(zapcore.NewTee(core, testLogCore(t)))
	}
	cfg.Metrics = NewMetrics(reg)
	if cfg.FIX.Username == "" {
		cfg.FIX.Username, cfg.FIX.Password = testUser, testPassword
	}
	if cfg.Elector == nil {
		cfg.Elector = &soloElector{}
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rf := &runningFeeder{f: f, reg: reg, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { rf.done <- f.Run(ctx) }()
	t.Cleanup(rf.stop)
	return rf
}

func (rf *runningFeeder) stop() {
	if rf.stopped {
		return
	}
	rf.stopped = true
	rf.cancel()
	<-rf.done
}

// metric returns the value of a counter or gauge with the given labels (0 when absent).
func (rf *runningFeeder) metric(name string, labels map[string]string) float64 {
	v, err := metrictest.Value(rf.reg, name, labels)
	if err != nil {
		panic(err)
	}
	return v
}

// logged reports whether a log line with this message was written.
func (rf *runningFeeder) logged(msg string) bool {
	return rf.logs.FilterMessage(msg).Len() > 0
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(waitPollMs * time.Millisecond)
	}
}

// seenRate is one rate read back from the topic.
type seenRate struct {
	rate      eventing.RateV1
	id        string
	partition int
	offset    int64
	time      time.Time
	readAt    time.Time
}

// tail reads the rates topic from the beginning, every partition, until the test ends.
type tail struct {
	mu    sync.Mutex
	rates []seenRate
	errs  []error
	stop  context.CancelFunc
	wg    sync.WaitGroup
}

func tailRates(t testing.TB, brokerAddr string) *tail {
	t.Helper()
	conn, err := kafka.Dial("tcp", brokerAddr)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(eventing.TopicRates)
	_ = conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tl := &tail{stop: cancel}
	for _, p := range parts {
		tl.wg.Add(1)
		go tl.readPartition(ctx, brokerAddr, p.ID)
	}
	t.Cleanup(tl.close)
	return tl
}

func (tl *tail) close() {
	tl.stop()
	tl.wg.Wait()
}

func (tl *tail) readPartition(ctx context.Context, addr string, partition int) {
	defer tl.wg.Done()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: eventing.TopicRates, Partition: partition,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: tailReadTimeoutMs * time.Millisecond})
	defer r.Close()
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() == nil {
				tl.fail(fmt.Errorf("read partition %d: %w", partition, err))
			}
			return
		}
		tl.add(m, partition)
	}
}

func (tl *tail) add(m kafka.Message, partition int) {
	e, err := cekafka.FromMessage(m)
	if err != nil {
		tl.fail(err)
		return
	}
	r, err := eventing.Decode[eventing.RateV1](e, eventing.TypeRate)
	if err != nil {
		tl.fail(err)
		return
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.rates = append(tl.rates, seenRate{rate: *r, id: e.ID(), partition: partition, offset: m.Offset, time: m.Time,
		readAt: time.Now()})
}

func (tl *tail) fail(err error) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.errs = append(tl.errs, err)
}

// snapshot returns the rates read so far, in topic order per partition, and any read error.
func (tl *tail) snapshot() ([]seenRate, error) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	out := append([]seenRate(nil), tl.rates...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].partition != out[j].partition {
			return out[i].partition < out[j].partition
		}
		return out[i].offset < out[j].offset
	})
	return out, errors.Join(tl.errs...)
}

func (tl *tail) count() int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return len(tl.rates)
}

// byPair groups rates per pair, keeping topic order.
func byPair(rates []seenRate) map[fx.Pair][]seenRate {
	out := map[fx.Pair][]seenRate{}
	for _, r := range rates {
		out[r.rate.Pair] = append(out[r.rate.Pair], r)
	}
	return out
}
