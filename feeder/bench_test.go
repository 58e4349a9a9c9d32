package feeder

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Benchmark set-up: 50 pairs, one quote a millisecond is the requirement's 1,000 rates/s.
const (
	benchPaceMs          = 1
	benchWarmupMs        = 500
	benchChunk           = 500
	benchWaitSeconds     = 120
	benchSetupWaitSecond = 15
)

// benchRig is a blasting provider, the embedded broker and a leading feeder on loopback.
type benchRig struct {
	provider  *blaster
	feeder    *runningFeeder
	published atomic.Int64
	mu        sync.Mutex
	record    bool
	lat       latencies
}

func newBenchRig(b *testing.B) *benchRig {
	b.Helper()
	addr := startBroker(b)
	pairs := allPairs()
	rig := &benchRig{provider: startBlaster(b, pairs)}
	rig.feeder = startFeeder(b, Config{FIX: FIXConfig{Addr: rig.provider.addr()}, Pairs: pairs, Brokers: []string{addr},
		OnPublished: rig.observe})
	waitFor(b, benchSetupWaitSecond*time.Second, "the feeder logged on", func() bool {
		return rig.feeder.metric("kawase_feeder_fix_session_state", map[string]string{"state": SessionLoggedOn}) == 1
	})
	rig.provider.send(len(pairs))
	waitFor(b, benchSetupWaitSecond*time.Second, "the first rates", func() bool { return rig.published.Load() >= int64(len(pairs)) })
	return rig
}

func (r *benchRig) observe(p Published) {
	r.published.Add(1)
	r.mu.Lock()
	rec := r.record
	r.mu.Unlock()
	if rec {
		r.lat.observe(p)
	}
}

func (r *benchRig) recording(on bool) {
	r.mu.Lock()
	r.record = on
	r.mu.Unlock()
}

// BenchmarkPublishLatency measures FIX→Kafka latency at the requirement's load, one quote a
// millisecond round-robin over 50 pairs (1,000 rates/s): from the provider's SendingTime(52), stamped
// as the message is written, to the broker's acknowledgement (p50-ms, p99-ms), and from quickfixgo
// reading the message off the socket to the acknowledgement (recv-p50-ms, recv-p99-ms). One op is one
// rate; run with e.g. -benchtime=5000x for steady percentiles.
func BenchmarkPublishLatency(b *testing.B) {
	rig := newBenchRig(b)
	tick := time.NewTicker(benchPaceMs * time.Millisecond)
	defer tick.Stop()
	for range benchWarmupMs / benchPaceMs {
		<-tick.C
		rig.provider.send(1)
	}
	start := rig.published.Load()
	rig.recording(true)
	b.ResetTimer()
	for range b.N {
		<-tick.C
		rig.provider.send(1)
	}
	waitFor(b, benchWaitSeconds*time.Second, "every rate", func() bool { return rig.published.Load()-start >= int64(b.N) })
	b.StopTimer()
	rig.recording(false)
	rig.lat.mu.Lock()
	defer rig.lat.mu.Unlock()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(rig.lat.fix, 0.5)), "p50-ms")
	b.ReportMetric(ms(percentile(rig.lat.fix, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(rig.lat.in, 0.5)), "recv-p50-ms")
	b.ReportMetric(ms(percentile(rig.lat.in, 0.99)), "recv-p99-ms")
}

// BenchmarkFeederThroughput measures the feeder's sustained rate: the provider writes quotes for all
// 50 pairs as fast as the feeder's socket takes them (TCP back-pressure paces it), and the benchmark
// counts rates acknowledged by Kafka per second (rates/s). Provider, feeder and broker share this
// process and machine, so rates/s depends on how much of the machine other processes leave it; the
// benchmark also reports the process's CPU time (user and system) per rate over the same window
// (cpu-us/rate), which depends on that much less. It covers the provider (about 1%) and the embedded
// broker (about 8%) as well as the feeder. One op is one rate; run with e.g. -benchtime=200000x.
func BenchmarkFeederThroughput(b *testing.B) {
	rig := newBenchRig(b)
	start := rig.published.Load()
	b.ResetTimer()
	t0, cpu0 := time.Now(), processCPU(b)
	for sent := 0; sent < b.N; sent += benchChunk {
		rig.provider.send(min(benchChunk, b.N-sent))
	}
	waitFor(b, benchWaitSeconds*time.Second, "every rate", func() bool { return rig.published.Load()-start >= int64(b.N) })
	elapsed, cpu := time.Since(t0), processCPU(b)-cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "rates/s")
	b.ReportMetric(float64(cpu/time.Microsecond)/float64(b.N), "cpu-us/rate")
}

// processCPU is the CPU time (user and system) the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
