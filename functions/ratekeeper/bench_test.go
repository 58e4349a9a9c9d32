package ratekeeper_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
)

// benchPartitions is how many deliveries Knative keeps in flight against the keeper: one per
// partition of kawase.rates.
const benchPartitions = 50

// BenchmarkProcessRates delivers b.N new rates over HTTP as the ordered KafkaSource does — one in
// flight per partition, benchPartitions partitions at once, each partition its own pairs — into a
// keeper on a real database, and reports rates/s and delivery latency (POST to 200 = committed), with
// the default gathering of batches and without it.
func BenchmarkProcessRates(b *testing.B) {
	b.Run("gather=default", func(b *testing.B) { benchmarkProcessRates(b, ratekeeper.Config{}) })
	b.Run("gather=off", func(b *testing.B) { benchmarkProcessRates(b, ratekeeper.Config{GatherMax: -1}) })
}

func benchmarkProcessRates(b *testing.B, cfg ratekeeper.Config) {
	runDeliveries(b, cfg, 0)
}

// pacedRatesPerS is the steady load: 50 pairs every 50 ms.
const pacedRatesPerS = 1000

// BenchmarkProcessRatesPaced delivers b.N rates at pacedRatesPerS, spread over the partitions, and
// reports what the steady load costs: rates per transaction, the keeper's CPU per rate, and whether
// it kept up (rates/s equal to the pace, p99 delivery latency low).
func BenchmarkProcessRatesPaced(b *testing.B) {
	b.Run("gather=default", func(b *testing.B) { runDeliveries(b, ratekeeper.Config{}, pacedRatesPerS) })
	b.Run("gather=off", func(b *testing.B) { runDeliveries(b, ratekeeper.Config{GatherMax: -1}, pacedRatesPerS) })
}

// runDeliveries delivers b.N rates over benchPartitions partitions, one in flight each, as fast as
// they are answered (perS 0) or each partition on a schedule that adds up to perS.
func runDeliveries(b *testing.B, cfg ratekeeper.Config, perS int) {
	env := startKeeper(b, cfg)
	pairs := fx.Pairs()
	base := time.Now().UTC().Add(-time.Hour)
	perPartition := (b.N + benchPartitions - 1) / benchPartitions
	pairsPerPartition := max(1, len(pairs)/benchPartitions) // each partition its own pairs
	events := make([][]cloudevents.Event, benchPartitions)
	for p := range benchPartitions {
		for i := range perPartition {
			spec := pairs[(p+benchPartitions*(i%pairsPerPartition))%len(pairs)]
			events[p] = append(events[p], rateEvent(b, withEpoch(quote(spec.Pair, i, base, time.Millisecond), 1)))
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchPartitions}}
	lat := make([][]time.Duration, benchPartitions)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for p := range benchPartitions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, e := range events[p] {
				if perS > 0 {
					due := start.Add(time.Duration(i) * time.Second * benchPartitions / time.Duration(perS))
					time.Sleep(time.Until(due))
				}
				t0 := time.Now()
				d, err := deliver(context.Background(), client, env.srv.URL, e)
				if err != nil || d.status != http.StatusOK || d.outcome != string(ratekeeper.OutcomeAccepted) {
					b.Errorf("deliver: %v %d %s", err, d.status, d.body)
					return
				}
				lat[p] = append(lat[p], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return
	}
	b.ReportMetric(histogramMean(b, env, "kawase_ratekeeper_batch_size"), "rates/tx")
	b.ReportMetric(histogramMean(b, env, "kawase_ratekeeper_batch_seconds")*1000, "tx_ms")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "rates/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99_ms")
}

// histogramMean returns the mean of a histogram of env's registry.
func histogramMean(b *testing.B, env *keeperEnv, name string) float64 {
	b.Helper()
	mfs, err := env.reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleSum() / float64(max(1, h.GetSampleCount()))
		}
	}
	return 0
}
