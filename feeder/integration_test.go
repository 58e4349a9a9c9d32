package feeder

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/feeder/fixsim"
)

// The loopback integration run: 50 pairs, each quoted every 50 ms.
const (
	integrationIntervalMs   = 50
	integrationShortSeconds = 3
	integrationLongSeconds  = 30
	integrationDrainSeconds = 60
	// integrationVolumeWaitFactor bounds how long the run may take to carry its full volume, as a
	// multiple of its nominal duration: a busy machine ticks the simulator late, and the test waits
	// for the volume rather than asserting a rate.
	integrationVolumeWaitFactor = 4
)

// TestRatesReachTopic runs a short loopback run on every test invocation.
func TestRatesReachTopic(t *testing.T) {
	runIntegration(t, integrationShortSeconds*time.Second)
}

// TestRatesReachTopic30s is the acceptance run: 50 pairs × 20/s for 30 s; -short skips it.
func TestRatesReachTopic30s(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s loopback run; skipped with -short")
	}
	runIntegration(t, integrationLongSeconds*time.Second)
}

// migratedDB returns a fresh database with the feeder schema.
func migratedDB(t testing.TB) string {
	t.Helper()
	url := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	return url
}

// latencies collects publish latencies from the OnPublished hook.
type latencies struct {
	mu  sync.Mutex
	fix []time.Duration // SendingTime(52) at the provider → Kafka ack
	in  []time.Duration // read off the session → Kafka ack
}

func (l *latencies) observe(p Published) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fix = append(l.fix, p.AckedAt.Sub(p.SentAt))
	l.in = append(l.in, p.AckedAt.Sub(p.ReceivedAt))
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// runIntegration streams all 50 pairs through real FIX sessions, the feeder (PostgreSQL leader
// election) and the embedded broker for d, then checks that exactly what the provider sent reached
// the topic: per pair every quote id from 1 up, in order, none missing, none twice.
func runIntegration(t *testing.T, d time.Duration) {
	addr := startBroker(t)
	sim := startSim(t, fixsim.Config{Interval: integrationIntervalMs * time.Millisecond, Seed: 1})
	tl := tailRates(t, addr)
	pairs := allPairs()
	var lat latencies
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr()}, Pairs: pairs, Brokers: []string{addr},
		Elector: NewPGElector(migratedDB(t), "it", nil), OnPublished: lat.observe})
	waitFor(t, 15*time.Second, "all pairs subscribed", func() bool { return len(sim.Subscribed()) == len(pairs) })
	// The run carries the nominal volume: d at one quote per pair per interval, however late a busy
	// machine makes the simulator's ticks.
	perPair := int(d.Milliseconds() / integrationIntervalMs)
	started := time.Now()
	waitFor(t, integrationVolumeWaitFactor*d, "the provider sent the full volume", func() bool {
		quotes := sim.Stats().Quotes
		for _, p := range pairs {
			if quotes[p] < perPair {
				return false
			}
		}
		return true
	})
	d = time.Since(started)
	sim.Pause()
	sent := sim.Stats().Quotes
	total := 0
	for _, n := range sent {
		total += n
	}
	waitFor(t, integrationDrainSeconds*time.Second, "every quote in the topic", func() bool { return tl.count() >= total })
	time.Sleep(200 * time.Millisecond) // anything beyond total would be a duplicate
	rates, err := tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	checkExactlyOnceInOrder(t, rates, sent, pairs)
	if got := rf.metric("kawase_feeder_fix_disconnects_total", nil); got != 0 {
		t.Errorf("%v disconnects during the run", got)
	}
	lat.mu.Lock()
	defer lat.mu.Unlock()
	t.Logf("%d rates over %d pairs in %s (%.0f/s); provider SendingTime→ack (includes the simulator's own "+
		"queueing) p50 %s p99 %s; receipt→ack p50 %s p99 %s",
		len(rates), len(pairs), d, float64(len(rates))/d.Seconds(),
		percentile(lat.fix, 0.5), percentile(lat.fix, 0.99), percentile(lat.in, 0.5), percentile(lat.in, 0.99))
}

// checkExactlyOnceInOrder checks, per pair in topic order, quote ids 1..sent with no gap, no
// repeat, rising provider times, one epoch, sequences 1..n, and unique event ids.
func checkExactlyOnceInOrder(t *testing.T, rates []seenRate, sent map[fx.Pair]int, pairs []fx.Pair) {
	t.Helper()
	ids := map[string]bool{}
	for _, r := range rates {
		if ids[r.id] {
			t.Fatalf("duplicate event id %s", r.id)
		}
		ids[r.id] = true
	}
	per := byPair(rates)
	for _, p := range pairs {
		got := per[p]
		if len(got) != sent[p] {
			t.Errorf("%s: %d rates in the topic, provider sent %d", p, len(got), sent[p])
		}
		for i, r := range got {
			if want := strconv.Itoa(i + 1); r.rate.QuoteID != want {
				t.Fatalf("%s: rate %d has quote id %s, want %s (missing, duplicated or out of order)", p, i, r.rate.QuoteID, want)
			}
			if r.rate.Seq != int64(i+1) || r.rate.Epoch != got[0].rate.Epoch {
				t.Fatalf("%s: rate %d has epoch %d seq %d", p, i, r.rate.Epoch, r.rate.Seq)
			}
			if i > 0 && r.rate.ProviderTime.Before(got[i-1].rate.ProviderTime) {
				t.Fatalf("%s: provider time goes back at rate %d", p, i)
			}
		}
	}
}
