package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

// richEvent has every optional attribute set, so that an encoding that lost one would show.
func richEvent(t *testing.T, id string) cloudevents.Event {
	t.Helper()
	e := testEvent(t, "acct-7", 0)
	e.SetID(id)
	e.SetSubject("acct-7")
	e.SetTime(time.Date(2026, 11, 22, 4, 0, 0, 123_000_000, time.UTC))
	e.SetDataSchema("https://kawase.dev/schemas/test.v1.json")
	e.SetExtension("epoch", "7")
	return e
}

// post sends e to url in binary or structured mode and returns the status.
func post(t *testing.T, url string, e cloudevents.Event, structured bool) int {
	t.Helper()
	ctx := binding.WithForceBinary(context.Background())
	if structured {
		ctx = binding.WithForceStructured(context.Background())
	}
	req, err := cehttp.NewHTTPRequestFromEvent(ctx, url, e)
	if err != nil {
		t.Fatal(err)
	}
	ct := req.Header.Get("Content-Type")
	if structured != strings.HasPrefix(ct, "application/cloudevents+json") {
		t.Fatalf("request content type %q does not match structured=%v", ct, structured)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// sameRecord compares two records regardless of header order.
func sameRecord(a, b kafka.Message) bool {
	hs := func(m kafka.Message) []string {
		var out []string
		for _, h := range m.Headers {
			out = append(out, strings.ToLower(h.Key)+"="+string(h.Value))
		}
		slices.Sort(out)
		return out
	}
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) && slices.Equal(hs(a), hs(b))
}

// TestIngressAcceptsBinaryAndStructured posts the same event in binary and in structured mode to a
// KafkaChannel, a binary KafkaSink and a structured KafkaSink over HTTP: each answers 202 to both, and
// both posts leave the same record in the real topic (keyed by partitionkey), from which the event
// reads back with every attribute intact.
func TestIngressAcceptsBinaryAndStructured(t *testing.T) {
	endpoints := []struct {
		path, topic string
	}{
		{ChannelPath("executions"), "t.in.channel"},
		{SinkPath("dead"), "t.in.sink"},
		{SinkPath("dead-json"), "t.in.sinkjson"},
	}
	addr := startBroker(t, eventing.Topic{Name: "t.in.channel", Partitions: 3}, eventing.Topic{Name: "t.in.sink", Partitions: 2},
		eventing.Topic{Name: "t.in.sinkjson", Partitions: 1})
	top := Topology{
		Channels: []Channel{{Name: "executions", Topic: "t.in.channel"}},
		Sinks:    []Sink{{Name: "dead", Topic: "t.in.sink"}, {Name: "dead-json", Topic: "t.in.sinkjson", ContentMode: ContentStructured}},
	}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	startDispatcher(t, Config{Brokers: []string{addr}}, top, mux)

	sent := richEvent(t, "rich-1")
	for _, ep := range endpoints {
		t.Run(ep.topic, func(t *testing.T) {
			for _, structured := range []bool{false, true} {
				if got := post(t, srv.URL+ep.path, sent, structured); got != http.StatusAccepted {
					t.Fatalf("structured=%v: status %d, want 202", structured, got)
				}
			}
			recs := readTopic(t, addr, ep.topic, 2)
			if !sameRecord(recs[0], recs[1]) {
				t.Errorf("binary and structured posts left different records:\n%+v\n%+v", recs[0], recs[1])
			}
			if string(recs[0].Key) != "acct-7" {
				t.Errorf("record key %q, want the partitionkey", recs[0].Key)
			}
			back, err := cekafka.FromMessage(recs[0])
			if err != nil {
				t.Fatal(err)
			}
			if back.ID() != sent.ID() || back.Type() != sent.Type() || back.Source() != sent.Source() ||
				back.Subject() != sent.Subject() || !back.Time().Equal(sent.Time()) || back.DataSchema() != sent.DataSchema() ||
				back.DataContentType() != sent.DataContentType() || !jsonEqual(back.Data(), sent.Data()) ||
				ext(back, "epoch") != "7" || ext(back, "partitionkey") != "acct-7" {
				t.Errorf("event changed:\nsent %s\nread %s", sent, back)
			}
		})
	}
	recs := readTopic(t, addr, "t.in.sinkjson", 1)
	if ct := string(recs[0].Headers[0].Value); !strings.HasPrefix(ct, "application/cloudevents+json") {
		t.Errorf("structured sink wrote content type %q", ct)
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && fmt.Sprint(x) == fmt.Sprint(y)
}

// TestIngressRejectsBadRequests checks the problem+json answers of an endpoint backed by the real
// broker: wrong method, not a CloudEvent, a CloudEvent missing its id, an oversized body.
func TestIngressRejectsBadRequests(t *testing.T) {
	addr := startBroker(t, eventing.Topic{Name: "t.in.bad", Partitions: 1})
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	startDispatcher(t, Config{Brokers: []string{addr}}, Topology{Sinks: []Sink{{Name: "bad", Topic: "t.in.bad"}}}, mux)
	url := srv.URL + SinkPath("bad")
	cases := []struct {
		name, method, body string
		header             map[string]string
		status             int
		code               string
	}{
		{"get", http.MethodGet, "", nil, http.StatusMethodNotAllowed, "method_not_allowed"},
		{"plain json", http.MethodPost, `{"a":1}`, map[string]string{"Content-Type": "application/json"}, http.StatusBadRequest, "invalid_cloudevent"},
		{"no id", http.MethodPost, `{}`, map[string]string{"Ce-Specversion": "1.0", "Ce-Type": "x", "Ce-Source": "/x"}, http.StatusBadRequest, "invalid_cloudevent"},
		{"bad structured", http.MethodPost, `{"specversion":`, map[string]string{"Content-Type": "application/cloudevents+json"}, http.StatusBadRequest, "invalid_cloudevent"},
		{"too large", http.MethodPost, strings.Repeat("x", ingressBodyBytesMax+1),
			map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "1", "Ce-Type": "x", "Ce-Source": "/x"}, http.StatusRequestEntityTooLarge, "body_too_large"},
	}
	for _, tc := range cases {
		req, err := http.NewRequest(tc.method, url, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Code string `json:"code"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != tc.status || p.Code != tc.code || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %q (%s), want %d %q problem+json", tc.name, resp.StatusCode, p.Code,
				resp.Header.Get("Content-Type"), tc.status, tc.code)
		}
	}
}

// failingWriter is a Kafka that refuses every write.
type failingWriter struct{}

func (failingWriter) WriteMessages(context.Context, ...kafka.Message) error {
	return errors.New("broker down")
}

// TestIngressAnswers503WhenKafkaFails is a unit test of the one path the real broker cannot show
// quickly: a failed write answers 503, which senders retry.
func TestIngressAnswers503WhenKafkaFails(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	in := &ingress{endpoint: "KafkaSink/x", topic: "t.x", writer: failingWriter{}, m: m}
	srv := httptest.NewServer(in)
	t.Cleanup(srv.Close)
	if got := post(t, srv.URL, richEvent(t, "x"), false); got != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", got)
	}
}

// TestStructuredRecordCarriesTheWholeEvent checks the structured content mode encoding on its own.
func TestStructuredRecordCarriesTheWholeEvent(t *testing.T) {
	e := richEvent(t, "s-1")
	m, err := structuredRecord(e)
	if err != nil {
		t.Fatal(err)
	}
	back, err := cekafka.FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Key) != "acct-7" || back.ID() != "s-1" || ext(back, "epoch") != "7" || !jsonEqual(back.Data(), e.Data()) {
		t.Errorf("structured record %+v reads back as %s", m, back)
	}
}
