package dispatch

import (
	"context"
	"encoding/base64"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// source is a KafkaSource consumer of topic delivering to url.
func source(name, topic, url string, d Delivery) Consumer {
	return Consumer{Kind: KindKafkaSource, Name: name, Topic: topic, Group: "group-" + name,
		Subscriber: Destination{URL: url}, Delivery: d}
}

// seqOf returns the n of an event made by testEvent.
func seqOf(t *testing.T, e event.Event) (string, int) {
	t.Helper()
	var p struct {
		Key string `json:"key"`
		N   int    `json:"n"`
	}
	if err := e.DataAs(&p); err != nil {
		t.Fatalf("event %s: %v", e.ID(), err)
	}
	return p.Key, p.N
}

// TestOrderedDeliveryKeepsPartitionOrderUnderLoad delivers many keys over several partitions to a
// subscriber that fails a fifth of the events once with 503. Every key must arrive complete and in
// order, every partition's offsets in order exactly once, never two requests of one partition at once,
// and every event unchanged but for the Kafka extensions, in binary mode.
func TestOrderedDeliveryKeepsPartitionOrderUnderLoad(t *testing.T) {
	const topic, partitions, keys, perKey = "t.ordered", 4, 16, 20
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: partitions})
	sent := map[string]cloudevents.Event{}
	var events []cloudevents.Event
	for n := range perKey {
		for k := range keys {
			e := testEvent(t, fmt.Sprintf("acct-%02d", k), n)
			events = append(events, e)
			sent[e.ID()] = e
		}
	}
	publish(t, addr, topic, events...)

	var mu sync.Mutex
	inFlight, overlaps, failedOnce := map[string]int{}, 0, 0
	sub := newRecorder(t, func(_ http.ResponseWriter, _ *http.Request, e event.Event, attempt int) (int, string) {
		p := ext(e, ExtKafkaPartition)
		mu.Lock()
		inFlight[p]++
		if inFlight[p] > 1 {
			overlaps++
		}
		mu.Unlock()
		time.Sleep(time.Millisecond) // widens the window in which an overlap would show
		mu.Lock()
		defer mu.Unlock()
		inFlight[p]--
		h := fnv.New32a()
		h.Write([]byte(e.ID()))
		if attempt == 1 && h.Sum32()%5 == 0 {
			failedOnce++
			return http.StatusServiceUnavailable, "try again"
		}
		return http.StatusOK, ""
	})
	d := Delivery{Retry: 5, BackoffPolicy: BackoffLinear, BackoffDelay: 5 * time.Millisecond, Timeout: 10 * time.Second}
	c := source("ordered", topic, sub.url(), d)
	r := startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)

	waitFor(t, "every event delivered", func() bool { return len(sub.accepted()) >= len(events) })
	accepted := sub.accepted()
	if len(accepted) != len(events) {
		t.Fatalf("%d events accepted, want %d", len(accepted), len(events))
	}
	next := map[string]int{}
	nextOffset := map[string]int64{}
	for _, e := range accepted {
		key, n := seqOf(t, e)
		if n != next[key] {
			t.Fatalf("key %s: got event %d, want %d (per-key order broken)", key, n, next[key])
		}
		next[key]++
		p, off := ext(e, ExtKafkaPartition), ext(e, ExtKafkaOffset)
		if off != strconv.FormatInt(nextOffset[p], 10) {
			t.Fatalf("partition %s: got offset %s, want %d", p, off, nextOffset[p])
		}
		nextOffset[p]++
		orig := sent[e.ID()]
		if e.Type() != orig.Type() || e.Source() != orig.Source() || string(e.Data()) != string(orig.Data()) ||
			ext(e, "partitionkey") != ext(orig, "partitionkey") || e.DataContentType() != orig.DataContentType() {
			t.Fatalf("event changed on the way:\nsent %s\ngot %s", orig, e)
		}
	}
	if len(nextOffset) < 2 {
		t.Errorf("events used %d partitions; the test needs several", len(nextOffset))
	}
	mu.Lock()
	if overlaps != 0 {
		t.Errorf("%d requests overlapped another of the same partition", overlaps)
	}
	if failedOnce == 0 {
		t.Error("no event failed first; the test proves nothing about retries")
	}
	if got := r.count(r.d.consumers[0].m.retries.WithLabelValues(c.ID())); got != float64(failedOnce) {
		t.Errorf("retries metric = %v, want %d", got, failedOnce)
	}
	mu.Unlock()
	if !sub.binary {
		t.Error("events were not delivered in binary mode")
	}
	waitFor(t, "every offset committed", func() bool {
		got := committed(t, addr, c.Group, topic, partitions)
		for p, n := range nextOffset {
			pi, _ := strconv.Atoi(p)
			if got[pi] != n {
				return false
			}
		}
		return true
	})
	if got := r.count(r.d.consumers[0].m.deliveries.WithLabelValues(c.ID(), string(outcomeDelivered))); got != float64(len(events)) {
		t.Errorf("delivered metric = %v, want %d", got, len(events))
	}
}

// TestBlockedPartitionDoesNotStopOthers fails the first event of one partition until every event of
// the other partitions has been accepted: ordered delivery blocks a partition, not the consumer (the
// test would time out if it did).
func TestBlockedPartitionDoesNotStopOthers(t *testing.T) {
	const topic, partitions = "t.blocked", 3
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: partitions})
	var events []cloudevents.Event
	for n := range 5 {
		for k := range 9 {
			events = append(events, testEvent(t, fmt.Sprintf("acct-%d", k), n))
		}
	}
	publish(t, addr, topic, events...)
	lay := layout(t, addr, topic, partitions)
	if len(lay[0]) == 0 || len(lay[0]) == len(events) {
		t.Fatalf("partition 0 holds %d of %d events; the test needs events in several partitions", len(lay[0]), len(events))
	}
	blocked := lay[0][0]
	var others atomic.Int64
	othersTotal := int64(len(events) - len(lay[0]))
	var blockedAccepted, orderBroken atomic.Bool
	othersWhenBlocked := atomic.Int64{} // other events delivered when the blocked one was first refused
	othersWhenBlocked.Store(-1)
	sub := newRecorder(t, func(_ http.ResponseWriter, _ *http.Request, e event.Event, _ int) (int, string) {
		switch {
		case e.ID() == blocked && (others.Load() < othersTotal || othersWhenBlocked.Load() < 0):
			othersWhenBlocked.CompareAndSwap(-1, others.Load())
			return http.StatusServiceUnavailable, ""
		case e.ID() == blocked:
			blockedAccepted.Store(true)
		case ext(e, ExtKafkaPartition) == "0":
			if !blockedAccepted.Load() {
				orderBroken.Store(true)
			}
		default:
			// Slow enough that the other partitions are still busy when the blocked one starts.
			time.Sleep(2 * time.Millisecond)
			others.Add(1)
		}
		return http.StatusOK, ""
	})
	d := Delivery{Retry: 10_000, BackoffPolicy: BackoffLinear, BackoffDelay: time.Millisecond, Timeout: 10 * time.Second}
	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{source("blocked", topic, sub.url(), d)}}, nil)
	waitFor(t, "every event delivered", func() bool { return len(sub.accepted()) == len(events) })
	if orderBroken.Load() {
		t.Error("an event of the blocked partition overtook the blocked event")
	}
	if n := othersWhenBlocked.Load(); n < 0 || n >= othersTotal {
		t.Errorf("%d of %d other events were delivered before the blocked one was first refused: nothing was delivered around the block", n, othersTotal)
	}
}

// TestFullPartitionQueueDoesNotStopOthers: a blocked partition with more records than an ordered
// consumer queues ahead is left out of fetches, so records published to the other partitions after
// it filled up are still fetched and delivered around the block, and what the blocked partition has
// fetched ahead stays bounded while more is written to it.
func TestFullPartitionQueueDoesNotStopOthers(t *testing.T) {
	const topic, partitions, flood = "t.flood", 3, 2 * partitionQueueRecordsMax
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: partitions})
	floodOf := func(from int) []cloudevents.Event {
		var events []cloudevents.Event
		for n := from; n < from+flood; n++ {
			events = append(events, testEvent(t, "acct-0", n))
		}
		return events
	}
	publish(t, addr, topic, floodOf(0)...)
	blockedPartition := -1
	for p, ids := range layout(t, addr, topic, partitions) {
		if len(ids) > 0 {
			blockedPartition = p
		}
	}
	const blocked = "acct-0-0"
	var othersSeen sync.Map
	var others atomic.Int64
	var release, blockedRefused, blockedAccepted, orderBroken atomic.Bool
	sub := newRecorder(t, func(_ http.ResponseWriter, _ *http.Request, e event.Event, _ int) (int, string) {
		switch {
		case e.ID() == blocked && !release.Load():
			blockedRefused.Store(true)
			return http.StatusServiceUnavailable, ""
		case e.ID() == blocked:
			blockedAccepted.Store(true)
		case ext(e, ExtKafkaPartition) == fmt.Sprint(blockedPartition):
			if !blockedAccepted.Load() {
				orderBroken.Store(true)
			}
		default:
			if _, seen := othersSeen.LoadOrStore(e.ID(), true); !seen {
				others.Add(1)
			}
		}
		return http.StatusOK, ""
	})
	d := Delivery{Retry: 100_000, BackoffPolicy: BackoffLinear, BackoffDelay: time.Millisecond, Timeout: 10 * time.Second}
	r := startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{source("flood", topic, sub.url(), d)}}, nil)
	waitFor(t, "the blocked event refused", blockedRefused.Load)
	time.Sleep(100 * time.Millisecond) // the fetch loop has handed over the first flood by now
	var later []cloudevents.Event
	for n := range 5 {
		for k := 1; k < 12; k++ {
			later = append(later, testEvent(t, fmt.Sprintf("acct-%d", k), n))
		}
	}
	publish(t, addr, topic, append(floodOf(flood), later...)...)
	othersTotal := int64(0)
	for p, ids := range layout(t, addr, topic, partitions) {
		if p != blockedPartition {
			othersTotal += int64(len(ids))
		}
	}
	if othersTotal == 0 {
		t.Fatal("every key landed in the blocked partition; the test needs others")
	}
	waitFor(t, "the other partitions' events delivered around the block", func() bool { return others.Load() == othersTotal })
	waiting := r.d.consumers[0].m.waiting.WithLabelValues(r.d.consumers[0].id)
	// The first flood came in one fetch and paused the partition: the second is not fetched ahead.
	waitFor(t, "the first flood waiting, and no more", func() bool {
		n := r.count(waiting)
		return n >= partitionQueueRecordsMax && n <= flood
	})
	release.Store(true)
	waitFor(t, "every event delivered", func() bool { return len(sub.accepted()) >= 2*flood+len(later) })
	waitFor(t, "nothing waiting", func() bool { return r.count(waiting) == 0 })
	if orderBroken.Load() {
		t.Error("an event of the blocked partition overtook the blocked event")
	}
}

// TestRetrySchedule records when each attempt arrives at a subscriber that always answers 503, with
// the manifests' kind of durations scaled down by TimeScale, and checks the gaps against Knative's
// schedule: backoffDelay × 2^k (exponential) or × k (linear) before retry k. Timers never fire early,
// so each gap must be at least its backoff; the upper bound is generous for a loaded machine but still
// tells the policies apart. After the last retry the event is dead-lettered with the error extensions.
func TestRetrySchedule(t *testing.T) {
	const timeScale, retries = 20, 4
	ms := time.Millisecond
	cases := []struct {
		policy BackoffPolicy
		delay  time.Duration // as the manifest says it
		want   []time.Duration
	}{
		{BackoffExponential, time.Second, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms}},
		{BackoffLinear, 2 * time.Second, []time.Duration{100 * ms, 200 * ms, 300 * ms, 400 * ms}},
	}
	const early, late = 5 * time.Millisecond, 500 * time.Millisecond
	addr := startBroker(t, eventing.Topic{Name: "t.sched.exponential", Partitions: 1},
		eventing.Topic{Name: "t.sched.linear", Partitions: 1})
	for _, tc := range cases {
		t.Run(string(tc.policy), func(t *testing.T) {
			topic := "t.sched." + string(tc.policy)
			sub := newRecorder(t, func(http.ResponseWriter, *http.Request, event.Event, int) (int, string) {
				return http.StatusServiceUnavailable, "closed"
			})
			dls := newRecorder(t, nil)
			d := Delivery{Retry: retries, BackoffPolicy: tc.policy, BackoffDelay: tc.delay, Timeout: 10 * time.Second,
				DeadLetter: &Destination{URL: dls.url()}}
			startDispatcher(t, Config{Brokers: []string{addr}, TimeScale: timeScale},
				Topology{Consumers: []Consumer{source("sched-"+string(tc.policy), topic, sub.url(), d)}}, nil)
			publish(t, addr, topic, testEvent(t, "acct-1", 0))
			waitFor(t, "the dead letter", func() bool { return len(dls.snapshot()) > 0 })
			got := sub.snapshot()
			if len(got) != retries+1 {
				t.Fatalf("%d attempts, want %d", len(got), retries+1)
			}
			for k := 1; k <= retries; k++ {
				gap, want := got[k].at.Sub(got[k-1].at), tc.want[k-1]
				t.Logf("retry %d after %v (backoff %v)", k, gap, want)
				if gap < want-early || gap > want+late {
					t.Errorf("retry %d came %v after the previous attempt, want %v (−%v/+%v)", k, gap, want, early, late)
				}
			}
			dl := dls.snapshot()
			if len(dl) != 1 {
				t.Fatalf("%d dead letters, want 1", len(dl))
			}
			e := dl[0].event
			if ext(e, ExtErrorCode) != "503" || ext(e, ExtErrorDest) != sub.url() ||
				ext(e, ExtErrorData) != base64.StdEncoding.EncodeToString([]byte("closed")) {
				t.Errorf("dead letter extensions: %v", e.Extensions())
			}
		})
	}
}

// TestAttemptTimeoutIsRetried hangs the first attempt longer than the (scaled) timeout: the
// dispatcher must give up on it, which the subscriber sees as a cancelled request, and retry.
func TestAttemptTimeoutIsRetried(t *testing.T) {
	const topic = "t.timeout"
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: 1})
	var cancelled atomic.Bool
	sub := newRecorder(t, func(_ http.ResponseWriter, r *http.Request, _ event.Event, attempt int) (int, string) {
		if attempt == 1 {
			select {
			case <-r.Context().Done():
				cancelled.Store(true)
			case <-time.After(waitMax):
			}
			return http.StatusOK, ""
		}
		return http.StatusOK, ""
	})
	dls := newRecorder(t, nil)
	d := Delivery{Retry: 2, BackoffPolicy: BackoffLinear, BackoffDelay: 10 * time.Millisecond, Timeout: time.Second,
		DeadLetter: &Destination{URL: dls.url()}}
	startDispatcher(t, Config{Brokers: []string{addr}, TimeScale: 10},
		Topology{Consumers: []Consumer{source("timeout", topic, sub.url(), d)}}, nil)
	publish(t, addr, topic, testEvent(t, "acct-1", 0))
	waitFor(t, "the second attempt", func() bool { return len(sub.snapshot()) >= 2 })
	got := sub.snapshot()
	if !cancelled.Load() {
		t.Error("the first attempt was not cancelled at its timeout")
	}
	// The timeout runs from the dispatcher's send, the times here from each request's arrival, so the
	// gap can fall short of 100 ms by however late the first request arrived (6 ms seen on a loaded
	// machine). A retry that did not wait for the timeout would come about 1 ms (the backoff) after.
	if gap := got[1].at.Sub(got[0].at); gap < 50*time.Millisecond {
		t.Errorf("second attempt %v after the first: it did not wait for the 100ms (scaled) timeout", gap)
	}
	if n := len(dls.snapshot()); n != 0 {
		t.Errorf("%d dead letters after a successful retry", n)
	}
}

// TestStatusClassification runs one consumer per status over real HTTP: retryable statuses (and
// hanging up) are attempted retry+1 times, every other non-2xx exactly once, and each ends at the
// dead-letter sink with its status as knativeerrorcode (none when there was no answer).
func TestStatusClassification(t *testing.T) {
	const retries = 2
	// Knative's data-plane table: these are retried, every other failure is final.
	retried := map[int]bool{404: true, 408: true, 409: true, 429: true, 500: true, 503: true, -1: true}
	statuses := []int{404, 408, 409, 429, 500, 503, -1, 400, 401, 403, 410, 422, 301, 307}
	var topics []eventing.Topic
	for _, s := range statuses {
		topics = append(topics, eventing.Topic{Name: fmt.Sprintf("t.status.%d", s), Partitions: 1})
	}
	addr := startBroker(t, topics...)
	dls := newRecorder(t, nil)
	subs := map[int]*recorder{}
	var top Topology
	for _, s := range statuses {
		sub := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ event.Event, _ int) (int, string) {
			if s == 301 || s == 307 {
				w.Header().Set("Location", "/elsewhere")
			}
			return s, "status " + strconv.Itoa(s)
		})
		subs[s] = sub
		d := Delivery{Retry: retries, BackoffPolicy: BackoffLinear, BackoffDelay: time.Millisecond, Timeout: 10 * time.Second,
			DeadLetter: &Destination{URL: dls.url()}}
		top.Consumers = append(top.Consumers, source(fmt.Sprintf("status-%d", s), fmt.Sprintf("t.status.%d", s), sub.url(), d))
	}
	startDispatcher(t, Config{Brokers: []string{addr}}, top, nil)
	for _, s := range statuses {
		publish(t, addr, fmt.Sprintf("t.status.%d", s), testEvent(t, fmt.Sprintf("status-%d", s), 0))
	}
	waitFor(t, "every dead letter", func() bool { return len(dls.snapshot()) == len(statuses) })
	byID := map[string]event.Event{}
	for _, a := range dls.snapshot() {
		byID[a.event.ID()] = a.event
	}
	for _, s := range statuses {
		id := fmt.Sprintf("status-%d-0", s)
		want := 1
		if retried[s] {
			want = retries + 1
		}
		if got := subs[s].attemptsOf(id); got != want {
			t.Errorf("status %d: %d attempts, want %d", s, got, want)
		}
		wantCode := strconv.Itoa(s)
		if s < 0 {
			wantCode = ""
		}
		if got := ext(byID[id], ExtErrorCode); got != wantCode {
			t.Errorf("status %d: knativeerrorcode %q, want %q", s, got, wantCode)
		}
	}
}

// TestFinalStatusDeadLettersAtOnce answers 422 with a 2000-byte body and a kne- header: exactly one
// attempt, then the event reaches the dead-letter KafkaSink (a real endpoint writing to a real topic)
// unchanged but for the error extensions: the subscriber URL, the status, the base64 of the first
// 1024 bytes of the body, and the header. Its offset is committed once the sink took it.
func TestFinalStatusDeadLettersAtOnce(t *testing.T) {
	const topic, deadTopic = "t.final", "t.final.dead"
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: 1}, eventing.Topic{Name: deadTopic, Partitions: 1})
	body := make([]byte, 2000)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	sub := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ event.Event, _ int) (int, string) {
		w.Header().Set("Kne-Reason", "rejected-by-test")
		return http.StatusUnprocessableEntity, string(body)
	})
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	resolver := func(kind, name string) (string, error) {
		if kind != KindKafkaSink {
			return "", fmt.Errorf("unexpected %s/%s", kind, name)
		}
		return srv.URL + SinkPath(name), nil
	}
	d := Delivery{Retry: 5, BackoffPolicy: BackoffExponential, BackoffDelay: 10 * time.Millisecond, Timeout: 10 * time.Second,
		DeadLetter: &Destination{Kind: KindKafkaSink, Name: "dead"}}
	c := source("final", topic, sub.url(), d)
	r := startDispatcher(t, Config{Brokers: []string{addr}, Resolve: resolver},
		Topology{Consumers: []Consumer{c}, Sinks: []Sink{{Name: "dead", Topic: deadTopic}}}, mux)
	sent := testEvent(t, "acct-9", 0)
	publish(t, addr, topic, sent)

	recs := readTopic(t, addr, deadTopic, 1)
	if got := sub.attemptsOf(sent.ID()); got != 1 {
		t.Errorf("%d attempts at a 422, want exactly 1", got)
	}
	if string(recs[0].Key) != "acct-9" {
		t.Errorf("dead letter record key %q, want the partitionkey", recs[0].Key)
	}
	e, err := cekafka.FromMessage(recs[0])
	if err != nil {
		t.Fatal(err)
	}
	data, err := base64.StdEncoding.DecodeString(ext(e, ExtErrorData))
	if err != nil {
		t.Fatalf("knativeerrordata is not base64: %v", err)
	}
	if string(data) != string(body[:1024]) {
		t.Errorf("knativeerrordata decodes to %d bytes %q..., want the body's first 1024", len(data), data[:min(len(data), 40)])
	}
	for name, want := range map[string]string{ExtErrorDest: sub.url(), ExtErrorCode: "422", "reason": "rejected-by-test",
		ExtKafkaPartition: "0", ExtKafkaOffset: "0", "partitionkey": "acct-9"} {
		if got := ext(e, name); got != want {
			t.Errorf("extension %s = %q, want %q", name, got, want)
		}
	}
	if e.ID() != sent.ID() || e.Type() != sent.Type() || e.Source() != sent.Source() || string(e.Data()) != string(sent.Data()) {
		t.Errorf("dead letter changed the event:\nsent %s\ngot %s", sent, e)
	}
	waitFor(t, "the offset committed", func() bool { return committed(t, addr, c.Group, topic, 1)[0] == 1 })
	if got := sub.attemptsOf(sent.ID()); got != 1 {
		t.Errorf("%d attempts at a 422 after the commit, want exactly 1", got)
	}
	m := r.d.consumers[0].m
	if got := r.count(m.deliveries.WithLabelValues(c.ID(), string(outcomeDeadLettered))); got != 1 {
		t.Errorf("dead_lettered deliveries = %v, want 1", got)
	}
	if got := r.count(m.retries.WithLabelValues(c.ID())); got != 0 {
		t.Errorf("retries = %v, want 0", got)
	}
}

// TestKillMidRetryRedelivers stops the dispatcher while it retries the third event: the first two are
// committed, the third is not, and a new dispatcher of the same group delivers the third again and the
// rest, and nothing before it.
func TestKillMidRetryRedelivers(t *testing.T) {
	const topic = "t.kill"
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: 1})
	var events []cloudevents.Event
	for n := range 5 {
		events = append(events, testEvent(t, "acct-1", n))
	}
	publish(t, addr, topic, events...)
	stuck := events[2].ID()
	sub1 := newRecorder(t, func(_ http.ResponseWriter, _ *http.Request, e event.Event, _ int) (int, string) {
		if e.ID() == stuck {
			return http.StatusServiceUnavailable, ""
		}
		return http.StatusOK, ""
	})
	d := Delivery{Retry: 10_000, BackoffPolicy: BackoffLinear, BackoffDelay: 5 * time.Millisecond, Timeout: 10 * time.Second}
	c := source("kill", topic, sub1.url(), d)
	r1 := startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)
	waitFor(t, "the third event in retries", func() bool { return sub1.attemptsOf(stuck) >= 3 })
	// Offsets are committed every commitIntervalMs: the first two get there, the third never does.
	waitFor(t, "the first two committed mid-retry", func() bool { return committed(t, addr, c.Group, topic, 1)[0] == 2 })
	r1.stop(t)
	if got := r1.count(r1.d.consumers[0].m.deliveries.WithLabelValues(c.ID(), string(outcomeAbandoned))); got != 1 {
		t.Errorf("abandoned deliveries = %v, want 1", got)
	}
	if got := committed(t, addr, c.Group, topic, 1)[0]; got != 2 {
		t.Fatalf("committed offset %d after the stop, want 2", got)
	}

	sub2 := newRecorder(t, nil)
	c.Subscriber = Destination{URL: sub2.url()}
	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)
	waitFor(t, "the rest delivered", func() bool { return committed(t, addr, c.Group, topic, 1)[0] == 5 })
	var got []string
	for _, e := range sub2.accepted() {
		got = append(got, e.ID())
	}
	want := []string{events[2].ID(), events[3].ID(), events[4].ID()}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after the restart got %v, want %v", got, want)
	}
}

// TestRestartResumesFromCommittedOffset runs a dispatcher until every partition is stuck retrying
// (each at a known event), checks that exactly the delivered prefix of each partition is committed,
// then resumes with a new dispatcher: each partition continues exactly at its committed offset (the
// stuck event again), nothing skipped and nothing committed delivered twice.
func TestRestartResumesFromCommittedOffset(t *testing.T) {
	const topic, partitions, keys, perKey, firstBad = "t.restart", 3, 9, 12, 6
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: partitions})
	var events []cloudevents.Event
	for n := range perKey {
		for k := range keys {
			events = append(events, testEvent(t, fmt.Sprintf("acct-%d", k), n))
		}
	}
	publish(t, addr, topic, events...)
	lay := layout(t, addr, topic, partitions)
	bad := func(id string) bool {
		var n int
		_, _ = fmt.Sscanf(id[len("acct-0-"):], "%d", &n)
		return n >= firstBad
	}
	prefix, stuck := map[int]int{}, map[int]string{}
	for p, ids := range lay {
		prefix[p] = len(ids)
		for i, id := range ids {
			if bad(id) {
				prefix[p], stuck[p] = i, id
				break
			}
		}
	}
	sub1 := newRecorder(t, func(_ http.ResponseWriter, _ *http.Request, e event.Event, _ int) (int, string) {
		if bad(e.ID()) {
			return http.StatusServiceUnavailable, ""
		}
		return http.StatusOK, ""
	})
	d := Delivery{Retry: 10_000, BackoffPolicy: BackoffLinear, BackoffDelay: 5 * time.Millisecond, Timeout: 10 * time.Second}
	c := source("restart", topic, sub1.url(), d)
	r1 := startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)
	waitFor(t, "every partition stuck", func() bool {
		for _, id := range stuck {
			if sub1.attemptsOf(id) < 2 {
				return false
			}
		}
		return true
	})
	r1.stop(t)
	offsets := committed(t, addr, c.Group, topic, partitions)
	byPartition := func(events []event.Event) map[int][]string {
		out := map[int][]string{}
		for _, e := range events {
			p, _ := strconv.Atoi(ext(e, ExtKafkaPartition))
			out[p] = append(out[p], e.ID())
		}
		return out
	}
	first := byPartition(sub1.accepted())
	for p := range partitions {
		if offsets[p] != int64(prefix[p]) && !(prefix[p] == 0 && offsets[p] < 0) {
			t.Errorf("partition %d: committed %d, want %d", p, offsets[p], prefix[p])
		}
		if fmt.Sprint(first[p]) != fmt.Sprint(lay[p][:prefix[p]]) {
			t.Errorf("partition %d: first run delivered %v, want %v", p, first[p], lay[p][:prefix[p]])
		}
	}

	sub2 := newRecorder(t, nil)
	c.Subscriber = Destination{URL: sub2.url()}
	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)
	waitFor(t, "the rest delivered", func() bool { return len(sub2.accepted()) >= len(events)-len(sub1.accepted()) })
	second := byPartition(sub2.accepted())
	for p := range partitions {
		if fmt.Sprint(second[p]) != fmt.Sprint(lay[p][prefix[p]:]) {
			t.Errorf("partition %d: second run delivered %v, want %v", p, second[p], lay[p][prefix[p]:])
		}
	}
	waitCommittedToEnd(t, addr, c.Group, topic, partitions, lay)
}

// TestDeadLetterSinkUnreachableKeepsRetrying refuses an event for good while the dead-letter sink
// first hangs up and then answers 503, six times in all, well past the delivery's own retry count.
// The dispatcher keeps trying it, leaves the offset uncommitted meanwhile, and commits once the sink
// accepts.
func TestDeadLetterSinkUnreachableKeepsRetrying(t *testing.T) {
	const topic, failures = "t.dls", 6
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: 1})
	sub := newRecorder(t, func(http.ResponseWriter, *http.Request, event.Event, int) (int, string) {
		return http.StatusBadRequest, "never"
	})
	dls := newRecorder(t, func(_ http.ResponseWriter, _ *http.Request, _ event.Event, attempt int) (int, string) {
		switch {
		case attempt <= failures/2:
			return -1, ""
		case attempt <= failures:
			return http.StatusServiceUnavailable, ""
		}
		return http.StatusAccepted, ""
	})
	d := Delivery{Retry: 1, BackoffPolicy: BackoffLinear, BackoffDelay: time.Second, Timeout: 10 * time.Second,
		DeadLetter: &Destination{URL: dls.url()}}
	c := source("dls", topic, sub.url(), d)
	r := startDispatcher(t, Config{Brokers: []string{addr}, TimeScale: 10}, Topology{Consumers: []Consumer{c}}, nil)
	sent := testEvent(t, "acct-1", 0)
	publish(t, addr, topic, sent)
	waitFor(t, "five failed dead-letter attempts", func() bool { return dls.attemptsOf(sent.ID()) >= failures-1 })
	if got := committed(t, addr, c.Group, topic, 1)[0]; got >= 0 {
		t.Fatalf("offset committed (%d) while the dead-letter sink is unreachable", got)
	}
	waitFor(t, "the dead-letter sink to accept", func() bool { return len(dls.accepted()) == 1 })
	waitFor(t, "the offset committed", func() bool { return committed(t, addr, c.Group, topic, 1)[0] == 1 })
	if got := dls.attemptsOf(sent.ID()); got != failures+1 {
		t.Errorf("%d dead-letter attempts, want %d", got, failures+1)
	}
	m := r.d.consumers[0].m
	if got := r.count(m.deadLetters.WithLabelValues(c.ID(), deadLetterFailed)); got != failures {
		t.Errorf("failed dead-letter attempts metric = %v, want %d", got, failures)
	}
	if got := r.count(m.deadLetters.WithLabelValues(c.ID(), deadLetterAccepted)); got != 1 {
		t.Errorf("accepted dead letters metric = %v, want 1", got)
	}
	if got := sub.attemptsOf(sent.ID()); got != 1 {
		t.Errorf("%d attempts at a 400, want 1", got)
	}
}

// TestUnorderedInFlightIsBounded holds every request of an unordered consumer: exactly
// unorderedInFlightCountMax reach the subscriber at once, no more, and all finish once released.
func TestUnorderedInFlightIsBounded(t *testing.T) {
	const topic, total = "t.unordered.bound", unorderedInFlightCountMax + 36
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: 2})
	var events []cloudevents.Event
	for n := range total {
		events = append(events, testEvent(t, fmt.Sprintf("acct-%d", n%7), n))
	}
	publish(t, addr, topic, events...)
	release := make(chan struct{})
	var inFlight, peak atomic.Int64
	sub := newRecorder(t, func(_ http.ResponseWriter, r *http.Request, _ event.Event, _ int) (int, string) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-release:
			return http.StatusOK, ""
		case <-r.Context().Done():
			return http.StatusServiceUnavailable, ""
		}
	})
	c := source("unordered-bound", topic, sub.url(), Delivery{Timeout: time.Minute})
	c.Ordering = Unordered
	r := startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)
	waitFor(t, "the in-flight bound reached", func() bool { return inFlight.Load() >= unorderedInFlightCountMax })
	time.Sleep(200 * time.Millisecond) // room for a request beyond the bound to show up
	if got := peak.Load(); got != unorderedInFlightCountMax {
		t.Errorf("peak in flight %d, want %d", got, unorderedInFlightCountMax)
	}
	if got := r.count(r.d.consumers[0].m.inFlight.WithLabelValues(c.ID())); got != unorderedInFlightCountMax {
		t.Errorf("in-flight gauge %v, want %d", got, unorderedInFlightCountMax)
	}
	close(release)
	waitFor(t, "every event delivered", func() bool { return len(sub.accepted()) == total })
	waitFor(t, "every offset committed", func() bool {
		got := committed(t, addr, c.Group, topic, 2)
		return got[0]+got[1] == total
	})
}

// TestUnorderedCommitsOnlyFinishedPrefix lets an unordered consumer deliver out of order (event 0 waits
// for event 1 to arrive, which would deadlock an ordered one) while event 3 keeps failing: everything
// else is delivered, but the committed offset stops at 3 until event 3 is delivered.
func TestUnorderedCommitsOnlyFinishedPrefix(t *testing.T) {
	const topic, total = "t.unordered.prefix", 30
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: 1})
	var events []cloudevents.Event
	for n := range total {
		events = append(events, testEvent(t, "acct-1", n))
	}
	publish(t, addr, topic, events...)
	second := make(chan struct{})
	var secondOnce sync.Once
	var healed atomic.Bool
	sub := newRecorder(t, func(_ http.ResponseWriter, r *http.Request, e event.Event, _ int) (int, string) {
		switch e.ID() {
		case events[0].ID():
			select {
			case <-second:
			case <-r.Context().Done():
				return http.StatusServiceUnavailable, ""
			case <-time.After(waitMax):
				t.Error("event 1 never arrived while event 0 was in flight")
			}
		case events[1].ID():
			secondOnce.Do(func() { close(second) })
		case events[3].ID():
			if !healed.Load() {
				return http.StatusServiceUnavailable, ""
			}
		}
		return http.StatusOK, ""
	})
	d := Delivery{Retry: 10_000, BackoffPolicy: BackoffLinear, BackoffDelay: 5 * time.Millisecond, Timeout: time.Minute}
	c := source("unordered-prefix", topic, sub.url(), d)
	c.Ordering = Unordered
	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{c}}, nil)
	waitFor(t, "every other event delivered", func() bool { return len(sub.accepted()) == total-1 })
	waitFor(t, "the prefix committed", func() bool { return committed(t, addr, c.Group, topic, 1)[0] >= 3 })
	if got := committed(t, addr, c.Group, topic, 1)[0]; got != 3 {
		t.Fatalf("committed %d with event 3 still failing, want 3", got)
	}
	healed.Store(true)
	waitFor(t, "everything committed", func() bool { return committed(t, addr, c.Group, topic, 1)[0] == total })
}

// TestRecordsThatAreNotCloudEvents writes a plain record and then a CloudEvent: a KafkaSource turns the
// plain one into a dev.knative.kafka.event as Knative does, a KafkaChannel subscription discards it
// (and commits past it).
func TestRecordsThatAreNotCloudEvents(t *testing.T) {
	const srcTopic, chTopic = "t.plain.source", "t.plain.channel"
	addr := startBroker(t, eventing.Topic{Name: srcTopic, Partitions: 1}, eventing.Topic{Name: chTopic, Partitions: 1})
	plain := kafkaRecord("acct-5", `{"hello":"world"}`, "Content-Type", "Application/JSON", "X-Trace", "abc")
	for _, topic := range []string{srcTopic, chTopic} {
		writeRaw(t, addr, topic, plain)
		publish(t, addr, topic, testEvent(t, "acct-5", 1))
	}
	srcSub, chSub := newRecorder(t, nil), newRecorder(t, nil)
	src := source("plain", srcTopic, srcSub.url(), Delivery{})
	src.InvalidSource = "/apis/v1/namespaces/kawase/kafkasources/plain#" + srcTopic
	sub := Consumer{Kind: KindSubscription, Name: "plain", Topic: chTopic, Group: "group-sub-plain",
		Subscriber: Destination{URL: chSub.url()}}
	r := startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{src, sub}}, nil)
	waitFor(t, "deliveries", func() bool { return len(srcSub.accepted()) == 2 && len(chSub.accepted()) == 1 })

	e := srcSub.accepted()[0]
	if e.Type() != KafkaEventType || e.Source() != src.InvalidSource || e.ID() != "partition:0/offset:0" ||
		e.Subject() != "partition:0#0" || string(e.Data()) != `{"hello":"world"}` || e.DataContentType() != "application/json" {
		t.Errorf("wrapped record: %s", e)
	}
	for name, want := range map[string]string{"key": "acct-5", "partitionkey": "acct-5", "kafkaheaderxtrace": "abc",
		ExtKafkaPartition: "0", ExtKafkaOffset: "0"} {
		if got := ext(e, name); got != want {
			t.Errorf("wrapped record extension %s = %q, want %q", name, got, want)
		}
	}
	if got := chSub.accepted()[0].ID(); got != "acct-5-1" {
		t.Errorf("channel delivered %s, want acct-5-1", got)
	}
	waitFor(t, "the channel offsets committed", func() bool { return committed(t, addr, sub.Group, chTopic, 1)[0] == 2 })
	if got := r.count(r.d.consumers[1].m.deliveries.WithLabelValues(sub.ID(), string(outcomeDiscarded))); got != 1 {
		t.Errorf("discarded metric = %v, want 1", got)
	}
}

// kafkaRecord is a plain record with a key, a value and header name/value pairs.
func kafkaRecord(key, value string, headers ...string) kafka.Message {
	m := kafka.Message{Key: []byte(key), Value: []byte(value)}
	for i := 0; i+1 < len(headers); i += 2 {
		m.Headers = append(m.Headers, kafka.Header{Key: headers[i], Value: []byte(headers[i+1])})
	}
	return m
}

// writeRaw writes records as they are, through the real broker.
func writeRaw(t *testing.T, addr, topic string, msgs ...kafka.Message) {
	t.Helper()
	w := cekafka.NewWriter([]string{addr}, topic)
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitMax)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// TestSecondMemberTakesOverPartitions starts a second dispatcher in the same consumer group while the
// first one is delivering: the group rebalances, the second member gets partitions of its own, every
// event is delivered, neither member delivers a key's events out of order, and every offset ends up
// committed.
func TestSecondMemberTakesOverPartitions(t *testing.T) {
	const topic, partitions, keys = "t.rebalance", 4, 16
	addr := startBroker(t, eventing.Topic{Name: topic, Partitions: partitions})
	d := Delivery{Retry: 3, BackoffPolicy: BackoffLinear, BackoffDelay: 5 * time.Millisecond, Timeout: 10 * time.Second}
	c := source("rebalance", topic, "", d)
	subA, subB := newRecorder(t, nil), newRecorder(t, nil)
	a, b := c, c
	a.Subscriber, b.Subscriber = Destination{URL: subA.url()}, Destination{URL: subB.url()}
	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{a}}, nil)
	published := 0
	publishRound := func() {
		var events []cloudevents.Event
		for k := range keys {
			events = append(events, testEvent(t, fmt.Sprintf("acct-%d", k), published))
		}
		publish(t, addr, topic, events...)
		published++
	}
	publishRound()
	waitFor(t, "the first member delivering", func() bool { return len(subA.accepted()) >= keys })

	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Consumers: []Consumer{b}}, nil)
	waitFor(t, "the second member delivering", func() bool {
		publishRound()
		time.Sleep(50 * time.Millisecond)
		return len(subB.accepted()) > 0
	})
	publishRound()
	waitFor(t, "every event delivered", func() bool {
		ids := map[string]bool{}
		for _, e := range append(subA.accepted(), subB.accepted()...) {
			ids[e.ID()] = true
		}
		return len(ids) == keys*published
	})
	// A member may deliver again what it delivered before the rebalance but had not committed; it may
	// never skip ahead of an event it has not delivered yet.
	for name, rec := range map[string]*recorder{"first": subA, "second": subB} {
		highest := map[string]int{}
		for _, e := range rec.accepted() {
			key, n := seqOf(t, e)
			if h, ok := highest[key]; ok && n > h+1 {
				t.Errorf("%s member delivered %s's event %d before %d", name, key, n, h+1)
			}
			highest[key] = max(highest[key], n)
		}
	}
	waitCommittedToEnd(t, addr, c.Group, topic, partitions, layout(t, addr, topic, partitions))
}
