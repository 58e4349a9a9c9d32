package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// waitMax bounds every wait of these tests; generous, for a loaded 2-core machine.
const waitMax = 60 * time.Second

// startBroker starts the embedded broker with topics and returns its address.
func startBroker(t testing.TB, topics ...eventing.Topic) string {
	t.Helper()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), waitMax)
	defer cancel()
	if err := broker.EnsureTopics(ctx, []string{b.Addr()}, topics); err != nil {
		t.Fatal(err)
	}
	return b.Addr()
}

// testEvent is event n of key, with a JSON payload.
func testEvent(t testing.TB, key string, n int) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(fmt.Sprintf("%s-%d", key, n))
	e.SetType("kawase.test.v1")
	e.SetSource("/kawase/test")
	e.SetExtension("partitionkey", key)
	if err := e.SetData("application/json", map[string]any{"key": key, "n": n}); err != nil {
		t.Fatal(err)
	}
	return e
}

// publish writes events in binary mode, in order, through the real broker.
func publish(t testing.TB, addr, topic string, events ...cloudevents.Event) {
	t.Helper()
	w := cekafka.NewWriter([]string{addr}, topic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitMax)
	defer cancel()
	if err := cekafka.Publish(ctx, w, events...); err != nil {
		t.Fatal(err)
	}
}

// arrival is one request a recorder received.
type arrival struct {
	at     time.Time
	event  event.Event
	status int
}

// answerFunc chooses a recorder's answer to attempt (1, 2, ...) at delivering e: a status and a body.
// It may set headers on w. A negative status hangs up without answering, as an unreachable host would.
type answerFunc func(w http.ResponseWriter, r *http.Request, e event.Event, attempt int) (int, string)

// recorder is a real HTTP subscriber: it decodes every request as a CloudEvent (binary or structured),
// lets answer choose the status and body, and records what it saw.
type recorder struct {
	t      *testing.T
	srv    *httptest.Server
	answer answerFunc

	mu       sync.Mutex
	arrivals []arrival
	attempts map[string]int
	binary   bool // every request so far was binary mode
}

func newRecorder(t *testing.T, answer answerFunc) *recorder {
	t.Helper()
	rec := &recorder{t: t, answer: answer, attempts: map[string]int{}, binary: true}
	rec.srv = httptest.NewServer(http.HandlerFunc(rec.serve))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *recorder) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	binaryMode := r.Header.Get("Ce-Specversion") != ""
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		rec.t.Errorf("recorder got a request that is not a cloudevent: %v", err)
		return
	}
	rec.mu.Lock()
	rec.attempts[e.ID()]++
	attempt := rec.attempts[e.ID()]
	rec.binary = rec.binary && binaryMode
	rec.mu.Unlock()
	status, body := http.StatusOK, ""
	if rec.answer != nil {
		status, body = rec.answer(w, r, *e, attempt)
	}
	rec.mu.Lock()
	rec.arrivals = append(rec.arrivals, arrival{at: at, event: *e, status: status})
	rec.mu.Unlock()
	if status < 0 {
		hangUp(rec.t, w)
		return
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// hangUp closes the connection without an answer.
func hangUp(t *testing.T, w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	conn.Close()
}

// url is the recorder's address.
func (rec *recorder) url() string { return rec.srv.URL + "/" }

// snapshot copies the arrivals so far, in the order they arrived (a request is recorded when its
// answer is chosen, which for a held request is later).
func (rec *recorder) snapshot() []arrival {
	rec.mu.Lock()
	out := append([]arrival(nil), rec.arrivals...)
	rec.mu.Unlock()
	slices.SortStableFunc(out, func(a, b arrival) int { return a.at.Compare(b.at) })
	return out
}

// accepted returns the events answered 2xx, in arrival order.
func (rec *recorder) accepted() []event.Event {
	var out []event.Event
	for _, a := range rec.snapshot() {
		if a.status >= 200 && a.status < 300 {
			out = append(out, a.event)
		}
	}
	return out
}

// attemptsOf returns how many requests carried the event id.
func (rec *recorder) attemptsOf(id string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.attempts[id]
}

// running is a dispatcher started by startDispatcher.
type running struct {
	d      *Dispatcher
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// startDispatcher builds a dispatcher for top, mounts its endpoints on mux (when not nil), and runs it
// until stop or the end of the test.
func startDispatcher(t *testing.T, cfg Config, top Topology, mux *http.ServeMux) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registry = reg
	d, err := New(cfg, top)
	if err != nil {
		t.Fatal(err)
	}
	if mux != nil {
		d.Mount(mux)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{d: d, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the dispatcher and waits for Run to return; it fails the test if Run failed.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(waitMax):
		t.Fatal("Run did not return after its context ended")
	}
	if err := r.d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// count reads one counter or gauge of the dispatcher.
func (r *running) count(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		panic(err)
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}

// waitFor polls cond until it holds or waitMax passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitMax)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// committed returns the group's committed offset of each partition of topic (-1: none).
func committed(t *testing.T, addr, group, topic string, partitions int) map[int]int64 {
	t.Helper()
	ids := make([]int, partitions)
	for i := range ids {
		ids[i] = i
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitMax)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(addr)}
	resp, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err == nil {
		err = resp.Error
	}
	if err != nil {
		t.Fatalf("offset fetch: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil && !errors.Is(p.Error, kafka.UnknownTopicOrPartition) {
			t.Fatalf("offset fetch partition %d: %v", p.Partition, p.Error)
		}
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// waitCommittedToEnd waits until group has committed each of the partitions of topic to its end in
// lay (from layout).
func waitCommittedToEnd(t *testing.T, addr, group, topic string, partitions int, lay map[int][]string) {
	t.Helper()
	waitFor(t, "every offset committed", func() bool {
		got := committed(t, addr, group, topic, partitions)
		for p := range partitions {
			if got[p] != int64(len(lay[p])) {
				return false
			}
		}
		return true
	})
}

// layout reads every record of topic and returns the event ids of each partition in offset order.
func layout(t *testing.T, addr, topic string, partitions int) map[int][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitMax)
	defer cancel()
	out := map[int][]string{}
	for p := range partitions {
		conn, err := kafka.DialLeader(ctx, "tcp", addr, topic, p)
		if err != nil {
			t.Fatal(err)
		}
		end, err := conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		for int64(len(out[p])) < end {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			e, err := cekafka.FromMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			out[p] = append(out[p], e.ID())
		}
		r.Close()
	}
	return out
}

// readTopic reads n records of topic from the start (all partitions) with a fresh group.
func readTopic(t *testing.T, addr, topic string, n int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitMax)
	defer cancel()
	r := cekafka.NewGroupReader([]string{addr}, topic, fmt.Sprintf("reader-%s-%d", t.Name(), time.Now().UnixNano()))
	defer r.Close()
	var out []kafka.Message
	for len(out) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("read %s: %v (got %d of %d)", topic, err, len(out), n)
		}
		out = append(out, m)
	}
	return out
}

// ext returns an extension of e as a string ("" when absent).
func ext(e event.Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	return fmt.Sprint(v)
}
