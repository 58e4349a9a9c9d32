// Package dispatch is the local dispatcher of kawase dev: it runs the KafkaSources, KafkaChannels,
// Subscriptions and KafkaSinks of config/ on one machine with the delivery semantics of Knative's Kafka
// data plane, so that local mode behaves as the cluster does.
//
// A consumer (a KafkaSource, or a Subscription of a KafkaChannel) reads its topic with a Kafka consumer
// group and POSTs every record to its subscriber as a binary-mode CloudEvent carrying the
// knativekafkapartition and knativekafkaoffset extensions. Ordered consumers have one event per
// partition in flight; unordered ones up to unorderedInFlightCountMax. Failed attempts are retried inside
// the delivery (retry k waits backoffDelay × 2^k or × k; each attempt is bounded by the timeout):
// no answer, 404, 408, 409, 429 and 5xx are retried; any other non-2xx answer, and the last failure,
// send the event to the dead-letter sink with knativeerrordest, knativeerrorcode and knativeerrordata.
// An offset is committed only once its event was delivered or dead-lettered.
//
// One deliberate difference from Knative: when the dead-letter sink cannot be reached, Knative
// commits the offset anyway and the event is lost; the local dispatcher keeps retrying the
// dead-letter sink (see consumer.deadLetter) and commits only once it accepted the event.
//
// KafkaChannels and KafkaSinks are HTTP endpoints (http.Handlers) that write the CloudEvent they are
// given, binary or structured, to their topic, keyed by its partitionkey.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// Resolver returns the URL that a reference to the manifest object kind/name (KindService,
// KindKafkaSink, KindKafkaChannel) resolves to, as Knative's addressable resolver would in a
// cluster. kawase dev resolves a Service to http://<addr>/_svc/<name>/, a KafkaSink to
// http://<addr>+SinkPath(name) and a KafkaChannel to http://<addr>+ChannelPath(name).
type Resolver func(kind, name string) (url string, err error)

// Config is what the dispatcher needs from its host.
type Config struct {
	// Brokers are the Kafka bootstrap addresses.
	Brokers []string
	// TimeScale divides every delivery duration of the manifests (backoff delays, timeouts) and the
	// dispatcher's own dead-letter retry waits; 1 (or 0) runs them as written. Tests use it to run
	// Knative schedules quickly without editing the manifests.
	TimeScale int
	// Resolve turns the references of the Topology into URLs.
	Resolve Resolver
	// Log receives delivery failures; nil discards them.
	Log *zap.SugaredLogger
	// Registry receives the kawase_dispatch_* metrics; nil keeps them unregistered.
	Registry prometheus.Registerer
}

// Dispatcher runs a Topology: its consumers in Run, its channel and sink endpoints as http.Handlers.
type Dispatcher struct {
	brokers   []string
	consumers []*consumer
	channels  map[string]*ingress
	sinks     map[string]*ingress
	writers   []*kafka.Writer
	sender    *sender
}

// New checks t, resolves every subscriber and dead-letter sink with cfg.Resolve, and prepares the
// consumers and endpoints. Nothing is consumed before Run.
func New(cfg Config, t Topology) (*Dispatcher, error) {
	if len(cfg.Brokers) == 0 {
		return nil, fmt.Errorf("%w: no kafka brokers", ErrTopology)
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = zap.NewNop().Sugar()
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{brokers: cfg.Brokers, channels: map[string]*ingress{}, sinks: map[string]*ingress{},
		sender: newSender()}
	var errs []error
	for _, spec := range t.Consumers {
		c, err := d.newConsumer(cfg, spec, m, log)
		errs = append(errs, err)
		d.consumers = append(d.consumers, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, ch := range t.Channels {
		d.channels[ch.Name] = d.newIngress(KindKafkaChannel+"/"+ch.Name, ch.Topic, ContentBinary, m)
	}
	for _, s := range t.Sinks {
		d.sinks[s.Name] = d.newIngress(KindKafkaSink+"/"+s.Name, s.Topic, s.ContentMode, m)
	}
	return d, nil
}

func (d *Dispatcher) newConsumer(cfg Config, spec Consumer, m *metrics, log *zap.SugaredLogger) (*consumer, error) {
	c := &consumer{spec: spec, id: spec.ID(), brokers: cfg.Brokers, sched: newSchedule(spec.Delivery, cfg.TimeScale),
		sender: d.sender, m: m, log: log.With("consumer", spec.ID())}
	var err error
	if c.subscriber, err = resolve(cfg.Resolve, spec.Subscriber); err != nil {
		return nil, fmt.Errorf("%w: %s: subscriber: %w", ErrTopology, c.id, err)
	}
	if dl := spec.Delivery.DeadLetter; dl != nil {
		if c.deadLetterURL, err = resolve(cfg.Resolve, *dl); err != nil {
			return nil, fmt.Errorf("%w: %s: dead-letter sink: %w", ErrTopology, c.id, err)
		}
	}
	return c, nil
}

func (d *Dispatcher) newIngress(endpoint, topic string, mode ContentMode, m *metrics) *ingress {
	w := cekafka.NewWriter(d.brokers, topic)
	d.writers = append(d.writers, w)
	return &ingress{endpoint: endpoint, topic: topic, mode: mode, writer: w, m: m}
}

// resolve returns the URL of dest.
func resolve(r Resolver, dest Destination) (string, error) {
	switch {
	case dest.Kind == "" && dest.URL == "":
		return "", errors.New("no destination")
	case dest.Kind == "":
		return dest.URL, nil
	case r == nil:
		return "", fmt.Errorf("no resolver for %s", dest)
	}
	url, err := r(dest.Kind, dest.Name)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", dest, err)
	}
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return "", fmt.Errorf("resolve %s: %q is not an http(s) URL", dest, url)
	}
	return url, nil
}

// Run consumes and delivers until ctx ends, then stops every consumer, abandoning in-flight deliveries
// without committing them. Trouble with Kafka is counted and retried (see consumer.run); Run returns
// an error only when a consumer group cannot be set up at all, after stopping the others.
func (d *Dispatcher) Run(ctx context.Context) error {
	if len(d.consumers) == 0 {
		<-ctx.Done()
		return nil
	}
	runs := make([]func(context.Context) error, 0, len(d.consumers))
	for _, c := range d.consumers {
		runs = append(runs, c.run)
	}
	return observe.RunAll(ctx, runs...)
}

// ChannelHandler returns the ingress of the KafkaChannel name.
func (d *Dispatcher) ChannelHandler(name string) (http.Handler, bool) {
	in, ok := d.channels[name]
	return in, ok
}

// SinkHandler returns the endpoint of the KafkaSink name.
func (d *Dispatcher) SinkHandler(name string) (http.Handler, bool) {
	in, ok := d.sinks[name]
	return in, ok
}

// Mount serves every KafkaChannel at ChannelPath(name) and every KafkaSink at SinkPath(name) on mux.
func (d *Dispatcher) Mount(mux *http.ServeMux) {
	for name, in := range d.channels {
		mux.Handle(ChannelPath(name), in)
	}
	for name, in := range d.sinks {
		mux.Handle(SinkPath(name), in)
	}
}

// Close flushes and closes the channel and sink writers; call it after Run returned and the HTTP
// server that mounts the endpoints stopped.
func (d *Dispatcher) Close() error {
	var errs []error
	for _, w := range d.writers {
		if err := w.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close writer of %s: %w", w.Topic, err))
		}
	}
	d.sender.close()
	return errors.Join(errs...)
}
