package feeder

import (
	"github.com/prometheus/client_golang/prometheus"
)

// FIX session states, the values of the state label of kawase_feeder_fix_session_state.
const (
	SessionDisconnected = "disconnected"
	SessionConnecting   = "connecting"
	SessionLoggedOn     = "logged_on"
)

var sessionStates = []string{SessionDisconnected, SessionConnecting, SessionLoggedOn}

// publishLatencyBuckets span 100 µs to about 1.6 s, doubling.
var publishLatencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 15)

// Metrics are the feeder's Prometheus metrics.
type Metrics struct {
	SessionState   *prometheus.GaugeVec
	Received       *prometheus.CounterVec
	Published      *prometheus.CounterVec
	Dropped        *prometheus.CounterVec
	PublishLatency prometheus.Histogram
	IsLeader       prometheus.Gauge
	Epoch          prometheus.Gauge
	BrokerUp       prometheus.Gauge
	LogonFailures  *prometheus.CounterVec
	Disconnects    prometheus.Counter
	Rejects        *prometheus.CounterVec
	Malformed      *prometheus.CounterVec
	PublishErrors  prometheus.Counter
	// ProviderClockOffset is the provider time of the last quote read minus when it was read: a
	// provider clock running fast shows here before its quotes are refused as out of range.
	ProviderClockOffset prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		SessionState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kawase_feeder_fix_session_state",
			Help: "1 for the FIX session's current state (disconnected, connecting, logged_on), 0 for the others."}, []string{"state"}),
		Received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_feeder_rates_received_total",
			Help: "Quotes read off the FIX session, per pair."}, []string{"pair"}),
		Published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_feeder_rates_published_total",
			Help: "Rates acknowledged by Kafka, per pair."}, []string{"pair"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_feeder_rates_dropped_total",
			Help: "Quotes not published: fenced (leadership not held), publish_failed, or term_ended."}, []string{"reason"}),
		PublishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_feeder_publish_latency_seconds",
			Help: "From reading a quote off the FIX session to Kafka's acknowledgement.", Buckets: publishLatencyBuckets}),
		IsLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kawase_feeder_is_leader",
			Help: "1 while this replica holds leadership."}),
		Epoch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kawase_feeder_epoch",
			Help: "Fencing epoch of this replica's current or last leadership term."}),
		BrokerUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kawase_feeder_broker_up",
			Help: "1 while the Kafka broker answered the last check."}),
		LogonFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_feeder_fix_logon_failures_total",
			Help: "FIX logons that failed: refused (Logout with a reason), connect, or timeout."}, []string{"reason"}),
		Disconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_feeder_fix_disconnects_total",
			Help: "Logged-on FIX sessions that ended other than by our own logout."}),
		Rejects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_feeder_fix_rejects_total",
			Help: "Rejects from the provider: md_request (35=Y, per MDReqRejReason), session (35=3), business (35=j)."},
			[]string{"kind", "reason"}),
		Malformed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_feeder_fix_malformed_total",
			Help: "Malformed messages from the provider: garbled (unparseable), rejected (failed the data dictionary), invalid_quote, out_of_range (a provider time over 60 s ahead or a price far off)."},
			[]string{"kind"}),
		PublishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_feeder_publish_errors_total",
			Help: "Failed Kafka produce attempts (each retried a bounded number of times)."}),
		ProviderClockOffset: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kawase_feeder_provider_clock_offset_seconds",
			Help: "Provider time of the last quote read minus when it was read: about zero or slightly negative when the clocks agree; quotes over 60 s ahead are refused (alert well before, e.g. max_over_time over 1m above 30)."}),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			reg.MustRegister(c)
		}
	}
	m.setSessionState(SessionDisconnected)
	m.initLabels()
	return m
}

// initLabels creates the known series at zero, so that rates over them work from the start.
func (m *Metrics) initLabels() {
	for _, r := range []string{"fenced", "publish_failed", "term_ended"} {
		m.Dropped.WithLabelValues(r)
	}
	for _, r := range []string{"refused", "disconnected", "connect", "timeout"} {
		m.LogonFailures.WithLabelValues(r)
	}
	for _, k := range []string{"garbled", "rejected", "invalid_quote", "out_of_range"} {
		m.Malformed.WithLabelValues(k)
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.SessionState, m.Received, m.Published, m.Dropped, m.PublishLatency, m.IsLeader,
		m.Epoch, m.BrokerUp, m.LogonFailures, m.Disconnects, m.Rejects, m.Malformed, m.PublishErrors,
		m.ProviderClockOffset}
}

func (m *Metrics) setSessionState(state string) {
	for _, s := range sessionStates {
		v := 0.0
		if s == state {
			v = 1
		}
		m.SessionState.WithLabelValues(s).Set(v)
	}
}
