package feeder

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixsim"
)

// recoveryWaitSeconds bounds every wait of the recovery tests (the reconnect backoff is capped at
// reconnectDelayMaxMs, and quickfixgo starts a session on a whole second).
const recoveryWaitSeconds = 15

var recoveryPairs = []fx.Pair{"USD_JPY", "EUR_USD", "GBP_USD"}

// publishedSince waits until every pair has more than before published rates.
func waitPublished(t *testing.T, rf *runningFeeder, pairs []fx.Pair, more float64) {
	t.Helper()
	base := map[fx.Pair]float64{}
	for _, p := range pairs {
		base[p] = rf.metric("kawase_feeder_rates_published_total", map[string]string{"pair": string(p)})
	}
	waitFor(t, recoveryWaitSeconds*time.Second, "rates published again", func() bool {
		for _, p := range pairs {
			if rf.metric("kawase_feeder_rates_published_total", map[string]string{"pair": string(p)}) < base[p]+more {
				return false
			}
		}
		return true
	})
}

func TestWrongPasswordRefusedThenRecovers(t *testing.T) {
	addr := startBroker(t)
	sim := startSim(t, fixsim.Config{Interval: 20 * time.Millisecond})
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr(), Username: testUser, Password: "wrong"},
		Pairs: recoveryPairs, Brokers: []string{addr}})
	waitFor(t, recoveryWaitSeconds*time.Second, "a refused logon", func() bool {
		return rf.metric("kawase_feeder_fix_logon_failures_total", map[string]string{"reason": "refused"}) >= 1
	})
	lines := rf.logs.FilterMessage("fix logon refused by provider").All()
	if len(lines) == 0 || lines[0].ContextMap()["Text"] != "invalid Username(553) or Password(554)" {
		t.Fatalf("want a log line with the provider's reason, got %+v", lines)
	}
	if got := sim.Stats().LogonsRefused; got < 1 {
		t.Fatalf("simulator refused %d logons", got)
	}
	// The provider fixes the account; the feeder, still retrying with capped backoff, gets in.
	sim.SetCredentials(testUser, "wrong")
	waitPublished(t, rf, recoveryPairs, 5)
}

func TestUnknownSymbolRejectedOthersFlow(t *testing.T) {
	addr := startBroker(t)
	simPairs := []fx.Pair{"USD_JPY", "EUR_USD"}
	sim := startSim(t, fixsim.Config{Pairs: simPairs, Interval: 20 * time.Millisecond})
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr(), RerequestDelay: 200 * time.Millisecond},
		Pairs: append(simPairs, "MXN_JPY"), Brokers: []string{addr}})
	waitFor(t, recoveryWaitSeconds*time.Second, "the request rejected twice", func() bool {
		return rf.metric("kawase_feeder_fix_rejects_total", map[string]string{"kind": "md_request", "reason": "0"}) >= 2
	})
	lines := rf.logs.FilterMessage("fix market data request rejected").All()
	if len(lines) == 0 || lines[0].ContextMap()["pair"] != "MXN_JPY" || lines[0].ContextMap()["MDReqRejReason"] != "0" {
		t.Fatalf("want a log line naming MXN_JPY and MDReqRejReason 0, got %+v", lines)
	}
	waitPublished(t, rf, simPairs, 10)
	if got := rf.metric("kawase_feeder_fix_disconnects_total", nil); got != 0 {
		t.Fatalf("an unknown symbol cost %v disconnects", got)
	}
}

func TestDroppedConnectionReconnects(t *testing.T) {
	addr := startBroker(t)
	sim := startSim(t, fixsim.Config{Interval: 20 * time.Millisecond})
	tl := tailRates(t, addr)
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr()}, Pairs: recoveryPairs, Brokers: []string{addr}})
	waitPublished(t, rf, recoveryPairs, 5)
	if n := sim.DropSessions(); n != 1 {
		t.Fatalf("dropped %d connections", n)
	}
	waitFor(t, recoveryWaitSeconds*time.Second, "the loss noticed", func() bool {
		return rf.metric("kawase_feeder_fix_disconnects_total", nil) == 1
	})
	if !rf.logged("fix session lost") {
		t.Fatal("no log line for the lost session")
	}
	waitPublished(t, rf, recoveryPairs, 5)
	checkRising(t, tl)
}

// checkRising checks that each pair's rates in the topic are strictly newer one after the other.
func checkRising(t *testing.T, tl *tail) {
	t.Helper()
	rates, err := tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for p, rs := range byPair(rates) {
		for i := 1; i < len(rs); i++ {
			if !rs[i].rate.NewerThan(&rs[i-1].rate) {
				t.Fatalf("%s: rate %d is not newer than the one before it", p, i)
			}
		}
	}
}

func TestMalformedMessagesCountedSessionSurvives(t *testing.T) {
	addr := startBroker(t)
	sim := startSim(t, fixsim.Config{Interval: 20 * time.Millisecond})
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr()}, Pairs: recoveryPairs, Brokers: []string{addr}})
	waitPublished(t, rf, recoveryPairs, 5)
	for _, c := range []struct {
		kind   fixsim.Malformed
		metric string
		line   string
	}{
		{fixsim.MalformedGarbled, "garbled", "fix message from provider ignored: malformed"},
		{fixsim.MalformedBadPrice, "rejected", "fix message from provider rejected: malformed"},
		{fixsim.MalformedCrossed, "invalid_quote", "fix quote refused: malformed"},
		{fixsim.MalformedFuture, "out_of_range", "fix quote refused: out of range"},
	} {
		if err := sim.SendMalformed(c.kind); err != nil {
			t.Fatal(err)
		}
		waitFor(t, recoveryWaitSeconds*time.Second, string(c.kind)+" counted", func() bool {
			return rf.metric("kawase_feeder_fix_malformed_total", map[string]string{"kind": c.metric}) == 1
		})
		if !rf.logged(c.line) {
			t.Fatalf("%s: no log line %q", c.kind, c.line)
		}
		waitPublished(t, rf, recoveryPairs, 3)
	}
	if got := rf.metric("kawase_feeder_fix_disconnects_total", nil); got != 0 {
		t.Fatalf("malformed messages cost %v disconnects", got)
	}
	// The clock offset: the future quote's 600 s while it is the last quote read (the stream paused),
	// then small again (the simulator's clock is this one; a quote lags by the time it took to arrive).
	sim.Pause()
	time.Sleep(200 * time.Millisecond) // quotes sent before the pause arrive first, not after the future one
	if err := sim.SendMalformed(fixsim.MalformedFuture); err != nil {
		t.Fatal(err)
	}
	waitFor(t, recoveryWaitSeconds*time.Second, "the future quote's offset", func() bool {
		off := rf.metric("kawase_feeder_provider_clock_offset_seconds", nil)
		return off > 590 && off < 610
	})
	sim.Resume()
	waitFor(t, recoveryWaitSeconds*time.Second, "the offset of quotes from a clock that agrees", func() bool {
		off := rf.metric("kawase_feeder_provider_clock_offset_seconds", nil)
		return off < 1 && off > -5
	})
}

// TestBrokerOutageEndsTermThenRecovers: when Kafka stops acknowledging, the leader retries a bounded
// number of times, then ends its term (no rate is silently dropped: each is counted) and, once the
// broker is back, leads again under a new epoch.
func TestBrokerOutageEndsTermThenRecovers(t *testing.T) {
	port := freePort(t)
	b, err := broker.StartEmbedded(broker.EmbeddedOptions{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr()
	ensureTopics(t, addr)
	sim := startSim(t, fixsim.Config{Interval: 20 * time.Millisecond})
	rf := startFeeder(t, Config{FIX: FIXConfig{Addr: sim.Addr()}, Pairs: recoveryPairs, Brokers: []string{addr}})
	waitPublished(t, rf, recoveryPairs, 5)
	b.Close()
	waitFor(t, recoveryWaitSeconds*time.Second, "the term to end", func() bool { return rf.logged("leadership ended; standing by") })
	if rf.metric("kawase_feeder_publish_errors_total", nil) < 1 {
		t.Fatal("no publish error counted")
	}
	b, err = broker.StartEmbedded(broker.EmbeddedOptions{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ensureTopics(t, addr)
	waitPublished(t, rf, recoveryPairs, 5)
	if epoch := rf.metric("kawase_feeder_epoch", nil); epoch < 2 {
		t.Fatalf("leading again under epoch %v", epoch)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func ensureTopics(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := broker.EnsureTopics(ctx, []string{addr}, eventing.Topics()); err != nil {
		t.Fatal(err)
	}
}
