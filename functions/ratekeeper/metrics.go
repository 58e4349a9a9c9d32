package ratekeeper

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcome is what the keeper did with one delivered rate.
type Outcome string

// Outcomes of a delivery; each is counted in kawase_ratekeeper_rates_total.
const (
	// OutcomeAccepted: the rate was strictly newer and is now the pair's high-water mark.
	OutcomeAccepted Outcome = "accepted"
	// OutcomeDuplicate: the rate is not newer than the mark (a redelivery, a replay or an older quote).
	OutcomeDuplicate Outcome = "duplicate"
	// OutcomeStaleEpoch: the rate is newer but comes from a feeder epoch older than one already seen.
	OutcomeStaleEpoch Outcome = "stale_epoch"
	// OutcomeInvalid: the event can never be processed; it was answered 4xx for the dead-letter sink.
	OutcomeInvalid Outcome = "invalid"
)

type metrics struct {
	outcomes map[Outcome]prometheus.Counter
	// refused counts the invalid outcomes by the problem code they were answered with.
	refused     *prometheus.CounterVec
	batchSize   prometheus.Histogram
	batchTime   prometheus.Histogram
	storeErrors prometheus.Counter
	pruned      prometheus.Counter
	// rollupsPruned counts M1, M5 and H1 candles deleted beyond the newest a pair keeps.
	rollupsPruned prometheus.Counter
	lag           prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	outcomes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_ratekeeper_rates_total",
		Help: "Rates delivered to the ratekeeper, by outcome."}, []string{"outcome"})
	m := &metrics{
		outcomes: map[Outcome]prometheus.Counter{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_ratekeeper_refused_total",
			Help: "Rates refused for the dead-letter sink, by problem code (invalid_rate, rate_out_of_range, unknown_event_type, invalid_cloudevent, event_too_large)."},
			[]string{"code"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_ratekeeper_batch_size",
			Help: "Rates per committed transaction.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		batchTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_ratekeeper_batch_seconds",
			Help: "Time to commit one batch.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ratekeeper_store_errors_total",
			Help: "Batches that failed to commit (their deliveries are answered 503 and retried)."}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ratekeeper_ticks_pruned_total",
			Help: "Ticks deleted after the retention period."}),
		rollupsPruned: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ratekeeper_candles_pruned_total",
			Help: "M1, M5 and H1 candles deleted beyond the newest 5000 of a pair and granularity (all GetCandles serves)."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_ratekeeper_lag_seconds",
			Help:    "From the feeder's receipt of a rate to its commit here.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
	}
	for _, o := range []Outcome{OutcomeAccepted, OutcomeDuplicate, OutcomeStaleEpoch, OutcomeInvalid} {
		m.outcomes[o] = outcomes.WithLabelValues(string(o))
	}
	for _, code := range refusalCodes {
		m.refused.WithLabelValues(code)
	}
	for _, c := range []prometheus.Collector{outcomes, m.refused, m.batchSize, m.batchTime, m.storeErrors, m.pruned, m.rollupsPruned, m.lag} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
