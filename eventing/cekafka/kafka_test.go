package cekafka_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/cekafka"
)

const testTimeout = 60 * time.Second

func startBroker(t *testing.T, dataDir string, topics ...eventing.Topic) string {
	t.Helper()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := broker.EnsureTopics(ctx, []string{b.Addr()}, topics); err != nil {
		t.Fatal(err)
	}
	return b.Addr()
}

func event(t *testing.T, key string, n int) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(fmt.Sprintf("%s-%d", key, n))
	e.SetType("kawase.test.v1")
	e.SetSource("/kawase/test")
	e.SetExtension("partitionkey", key)
	if err := e.SetData("application/json", map[string]int{"n": n}); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestGroupConsumerKeepsPerKeyOrderAndResumes writes keyed events through the real broker over TCP,
// reads them with a consumer group that commits after processing, and checks per-key order and that
// a new reader of the same group resumes after the last commit.
func TestGroupConsumerKeepsPerKeyOrderAndResumes(t *testing.T) {
	addr := startBroker(t, "", eventing.Topic{Name: "t.order", Partitions: 4})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	w := cekafka.NewWriter([]string{addr}, "t.order")
	defer w.Close()
	keys := []string{"acct-1", "acct-2", "acct-3", "acct-4", "acct-5"}
	const perKey = 40
	var events []cloudevents.Event
	for n := range perKey {
		for _, k := range keys {
			events = append(events, event(t, k, n))
		}
	}
	if err := cekafka.Publish(ctx, w, events...); err != nil {
		t.Fatal(err)
	}
	half := len(events) / 2
	next := map[string]int{}
	consume := func(limit int) {
		r := cekafka.NewGroupReader([]string{addr}, "t.order", "g1")
		defer r.Close()
		for range limit {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			e, err := cekafka.FromMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			k := eventing.PartitionKey(e)
			if string(m.Key) != k {
				t.Fatalf("record key %q, partitionkey %q", m.Key, k)
			}
			if want := fmt.Sprintf("%s-%d", k, next[k]); e.ID() != want {
				t.Fatalf("key %s: got %s, want %s (order broken or record skipped/repeated)", k, e.ID(), want)
			}
			next[k]++
			if err := r.CommitMessages(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	consume(half)
	consume(len(events) - half)
	for _, k := range keys {
		if next[k] != perKey {
			t.Errorf("key %s: consumed %d of %d", k, next[k], perKey)
		}
	}
}

// TestEmbeddedBrokerKeepsDataAcrossRestart proves that a restart of the embedded broker with the same
// data directory keeps topics and records.
func TestEmbeddedBrokerKeepsDataAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := broker.EnsureTopics(ctx, []string{b.Addr()}, []eventing.Topic{{Name: "t.keep", Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	w := cekafka.NewWriter([]string{b.Addr()}, "t.keep")
	if err := cekafka.Publish(ctx, w, event(t, "k", 1), event(t, "k", 2)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	b.Close()

	b2, err := broker.StartEmbedded(broker.EmbeddedOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	r := cekafka.NewGroupReader([]string{b2.Addr()}, "t.keep", "g-keep")
	defer r.Close()
	for n := 1; n <= 2; n++ {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		e, err := cekafka.FromMessage(m)
		if err != nil || e.ID() != fmt.Sprintf("k-%d", n) {
			t.Fatalf("after restart got %v, %v", e.ID(), err)
		}
	}
}

// kcat is an independent Kafka client (librdkafka); make test installs it. Without it the test fails
// when KAWASE_REQUIRE_TOOLS is set (as make test sets it) and is skipped otherwise.
func kcat(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err == nil {
		return p
	}
	if os.Getenv("KAWASE_REQUIRE_TOOLS") != "" {
		t.Fatal("kcat not installed (apt-get install kcat)")
	}
	t.Skip("kcat not installed")
	return ""
}

func TestKcatSeesBinaryModeHeadersAndKey(t *testing.T) {
	bin := kcat(t)
	addr := startBroker(t, "", eventing.Topic{Name: "t.kcat", Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	w := cekafka.NewWriter([]string{addr}, "t.kcat")
	defer w.Close()
	if err := cekafka.Publish(ctx, w, event(t, "acct-9", 1)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, "-b", addr, "-C", "-t", "t.kcat", "-o", "beginning", "-c", "1", "-e",
		"-f", "key=%k\nheaders=%h\nvalue=%s\n").CombinedOutput()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"key=acct-9", "ce_id=acct-9-1", "ce_type=kawase.test.v1", "ce_source=/kawase/test",
		"ce_specversion=1.0", "content-type=application/json", `value={"n":1}`} {
		if !strings.Contains(s, want) {
			t.Errorf("kcat output lacks %q:\n%s", want, s)
		}
	}
}

func TestStructuredEventFromKcatReadsBack(t *testing.T) {
	bin := kcat(t)
	addr := startBroker(t, "", eventing.Topic{Name: "t.kcat.in", Partitions: 1})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	body := `{"specversion":"1.0","id":"ext-42","type":"kawase.test.v1","source":"/elsewhere",` +
		`"time":"2026-11-22T04:00:00Z","partitionkey":"acct-7","datacontenttype":"application/json","data":{"n":42}}`
	cmd := exec.CommandContext(ctx, bin, "-b", addr, "-P", "-t", "t.kcat.in", "-k", "acct-7",
		"-H", "content-type=application/cloudevents+json")
	cmd.Stdin = strings.NewReader(body + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat produce: %v\n%s", err, out)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "t.kcat.in", Partition: 0})
	defer r.Close()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e, err := cekafka.FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	want := event(t, "acct-7", 42)
	if e.ID() != "ext-42" || e.Type() != want.Type() || e.Source() != "/elsewhere" ||
		eventing.PartitionKey(e) != "acct-7" || string(e.Data()) != `{"n":42}` ||
		!e.Time().Equal(time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)) {
		t.Errorf("read back %s", e)
	}
}
