package dispatch

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// outcome is how the dispatcher finished with one record.
type outcome string

const (
	// outcomeDelivered: the subscriber answered 2xx; the offset is committed.
	outcomeDelivered outcome = "delivered"
	// outcomeDeadLettered: the dead-letter sink accepted the event; the offset is committed.
	outcomeDeadLettered outcome = "dead_lettered"
	// outcomeDropped: the event failed for good and there is no dead-letter sink, or the sink refused it
	// with a final status; the offset is committed, as Knative does.
	outcomeDropped outcome = "dropped"
	// outcomeDiscarded: a channel record that is not a CloudEvent; the offset is committed.
	outcomeDiscarded outcome = "discarded"
	// outcomeAbandoned: the dispatcher stopped mid-delivery; the offset is NOT committed, so the record
	// is delivered again by the next dispatcher of the group.
	outcomeAbandoned outcome = "abandoned"
)

// Results of one attempt at a dead-letter sink.
const (
	deadLetterAccepted = "accepted"
	deadLetterFailed   = "failed"
	deadLetterRefused  = "refused"
)

// metrics are the dispatcher's Prometheus series, labelled by consumer ("KafkaSource/name").
type metrics struct {
	deliveries  *prometheus.CounterVec
	retries     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	inFlight    *prometheus.GaugeVec
	// waiting is the records an ordered consumer fetched and has not finished.
	waiting *prometheus.GaugeVec
	ingress *prometheus.CounterVec
	// consumerErrors counts the consumer's own trouble with Kafka, each retried.
	consumerErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kawase_dispatch_deliveries_total",
			Help: "Records the local dispatcher finished, by consumer and outcome (delivered, dead_lettered, dropped, discarded, abandoned).",
		}, []string{"consumer", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kawase_dispatch_retries_total",
			Help: "Retries of deliveries to subscribers, by consumer.",
		}, []string{"consumer"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kawase_dispatch_dead_letters_total",
			Help: "Attempts to hand an event to a dead-letter sink, by consumer and result (accepted, failed, refused).",
		}, []string{"consumer", "result"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kawase_dispatch_in_flight",
			Help: "Deliveries in progress (attempts, backoff waits and dead-lettering included), by consumer.",
		}, []string{"consumer"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kawase_dispatch_records_waiting",
			Help: "Records an ordered consumer fetched and has not finished yet (queued or in delivery), by consumer; a partition with 512 waiting is not fetched until it catches up.",
		}, []string{"consumer"}),
		ingress: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kawase_dispatch_ingress_requests_total",
			Help: "Requests to KafkaChannel and KafkaSink endpoints, by endpoint and HTTP status code.",
		}, []string{"endpoint", "code"}),
		consumerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kawase_dispatch_consumer_errors_total",
			Help: "Failed Kafka operations of consumers (join, fetch, commit), each retried or ending a generation, by consumer and operation.",
		}, []string{"consumer", "operation"}),
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.deliveries, m.retries, m.deadLetters, m.inFlight, m.waiting, m.ingress, m.consumerErrors} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register dispatch metrics: %w", err)
	}
	return m, nil
}
