package rates

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// freshnessBuckets are the freshness histogram's upper bounds in seconds. The goal is p99 < 20 ms, so
// they are dense around it and one bound sits at exactly 20 ms: the share of rates that met the goal
// is read off a bucket, not interpolated across a wide one (powers of two put 16 and 32 ms either side).
var freshnessBuckets = []float64{0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015,
	0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5}

type metrics struct {
	applied       map[applied]prometheus.Counter
	undecodable   prometheus.Counter
	outOfRange    prometheus.Counter // well-formed rates that cannot be real (eventing.RateV1.CheckRange)
	tailErrors    prometheus.Counter
	seeded        prometheus.Counter // quiet pairs' rates taken from the ratekeeper at a cold start
	seedErrors    prometheus.Counter
	seedRefused   prometheus.Counter // the ratekeeper's last rates that could not be used
	freshness     prometheus.Histogram
	notModified   prometheus.Counter
	served        prometheus.Counter
	badRequests   prometheus.Counter
	streamClients prometheus.Gauge
	streamDropped prometheus.Counter
	streamBatches prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	appliedVec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_rates_applied_total",
		Help: "Rates read from the topic, by what the snapshot did with them."}, []string{"outcome"})
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_rates_requests_total",
		Help: "REST rate requests, by result."}, []string{"result"})
	m := &metrics{
		applied: map[applied]prometheus.Counter{
			appliedAccepted:   appliedVec.WithLabelValues("accepted"),
			appliedDuplicate:  appliedVec.WithLabelValues("duplicate"),
			appliedStaleEpoch: appliedVec.WithLabelValues("stale_epoch"),
			appliedIgnored:    appliedVec.WithLabelValues("ignored"),
		},
		undecodable: appliedVec.WithLabelValues("invalid"),
		outOfRange:  appliedVec.WithLabelValues("out_of_range"),
		seeded:      appliedVec.WithLabelValues("seeded"),
		seedRefused: appliedVec.WithLabelValues("seed_refused"),
		seedErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_rates_seed_errors_total",
			Help: "Failed calls for the ratekeeper's last rates of pairs quiet at a cold start (retried)."}),
		tailErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_rates_tail_errors_total",
			Help: "Failed fetches from the rates topic (the partition reader is restarted)."}),
		freshness: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_rates_freshness_seconds",
			Help:    "From the feeder's receipt of a rate to its publication in this replica's snapshot.",
			Buckets: freshnessBuckets}),
		notModified: requests.WithLabelValues("not_modified"),
		served:      requests.WithLabelValues("ok"),
		badRequests: requests.WithLabelValues("bad_request"),
		streamClients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kawase_rates_stream_clients",
			Help: "Connected SSE and gRPC stream clients."}),
		streamDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_rates_stream_dropped_total",
			Help: "Stream clients dropped for falling behind."}),
		streamBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_rates_stream_batches_total",
			Help: "Conflated update batches published to stream clients."}),
	}
	for _, c := range []prometheus.Collector{appliedVec, requests, m.tailErrors, m.seedErrors, m.freshness, m.streamClients,
		m.streamDropped, m.streamBatches} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
