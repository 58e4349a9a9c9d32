package dispatch

import (
	"errors"
	"fmt"
	"time"
)

// ErrTopology marks a Topology the dispatcher cannot run: a missing name, topic or subscriber, an
// unknown ordering or backoff policy, or a destination the resolver does not know.
var ErrTopology = errors.New("invalid dispatch topology")

// Kinds of the manifest objects a Destination may reference; the Resolver is asked for their URLs.
const (
	KindService      = "Service"
	KindKafkaSink    = "KafkaSink"
	KindKafkaChannel = "KafkaChannel"
)

// Kinds of consumer, as Knative names the objects that own them.
const (
	KindKafkaSource  = "KafkaSource"
	KindSubscription = "Subscription"
)

// Ordering says how many events of one partition may be in flight at once.
type Ordering string

const (
	// Ordered delivers one event per partition at a time: the next starts only after the previous one
	// was delivered or dead-lettered (Knative's "ordered").
	Ordered Ordering = "ordered"
	// Unordered delivers up to unorderedInFlightCountMax events of the consumer at once, in any order, and
	// still commits offsets in order (Knative's "unordered").
	Unordered Ordering = "unordered"
)

// BackoffPolicy is the shape of the wait before each retry.
type BackoffPolicy string

const (
	// BackoffExponential waits BackoffDelay × 2^k before retry k (k = 1..Retry), as Knative's Kafka
	// dispatcher does (its first retry already waits twice the delay).
	BackoffExponential BackoffPolicy = "exponential"
	// BackoffLinear waits BackoffDelay × k before retry k.
	BackoffLinear BackoffPolicy = "linear"
)

// ContentMode is how a KafkaSink writes an event into a Kafka record.
type ContentMode string

const (
	// ContentBinary puts attributes in ce_* headers and the data in the value (Knative's default).
	ContentBinary ContentMode = "binary"
	// ContentStructured puts the whole event, as JSON, in the value.
	ContentStructured ContentMode = "structured"
)

// Destination is where events go: a manifest object (Kind and Name, resolved by the Resolver) or an
// absolute URL.
type Destination struct {
	Kind string
	Name string
	// URL is used as is when Kind is empty.
	URL string
}

// String names the destination for messages.
func (d Destination) String() string {
	if d.Kind == "" {
		return d.URL
	}
	return d.Kind + "/" + d.Name
}

// Delivery is a consumer's retry and dead-letter policy, Knative's DeliverySpec with its durations
// parsed. Durations are the manifest's; Config.TimeScale divides them when the dispatcher runs.
type Delivery struct {
	// Retry is how many times a failed delivery is retried (0: never).
	Retry int
	// BackoffPolicy shapes the wait before each retry; empty means exponential, Knative's default.
	BackoffPolicy BackoffPolicy
	// BackoffDelay is the unit of the backoff.
	BackoffDelay time.Duration
	// Timeout bounds each attempt; zero means Knative's data-plane default (timeoutDefaultMs).
	Timeout time.Duration
	// DeadLetter receives an event that failed for good; nil drops it, as Knative does.
	DeadLetter *Destination
}

// Consumer is one KafkaSource, or one Subscription of a KafkaChannel: a consumer group reading a topic
// and delivering every record to a subscriber.
type Consumer struct {
	// Kind is KindKafkaSource or KindSubscription; Name is the object's name.
	Kind string
	Name string
	// Topic is read with the consumer group Group.
	Topic string
	Group string
	// Ordering is Ordered or Unordered; empty means Ordered, Knative's default.
	Ordering   Ordering
	Subscriber Destination
	Delivery   Delivery
	// InvalidSource, when set, turns a record that is not a CloudEvent into a "dev.knative.kafka.event"
	// with this source, as a KafkaSource does; when empty such a record is discarded (committed without
	// delivery), as a KafkaChannel does.
	InvalidSource string
	// Extensions are the KafkaSource's ceOverrides extensions, set on every delivered event.
	Extensions map[string]string
	// FetchLinger is how long the consumer waits after a fetch that returned records before fetching
	// again (see cekafka.PartitionsConfig.Linger); 0 fetches again at once. From the KafkaSource's
	// AnnotationFetchLinger.
	FetchLinger time.Duration
}

// ID names the consumer in logs and metric labels, e.g. "KafkaSource/rates-to-ratekeeper".
func (c Consumer) ID() string { return c.Kind + "/" + c.Name }

// Channel is a KafkaChannel: an HTTP ingress writing to its topic.
type Channel struct {
	Name  string
	Topic string
}

// Sink is a KafkaSink: an HTTP endpoint writing to its topic.
type Sink struct {
	Name  string
	Topic string
	// ContentMode is ContentBinary or ContentStructured; empty means binary, Knative's default.
	ContentMode ContentMode
}

// Topology is every eventing object the dispatcher runs, read from the manifests by FromManifest.
type Topology struct {
	Consumers []Consumer
	Channels  []Channel
	Sinks     []Sink
}

// validate checks what New cannot run; it fills no defaults.
func (t Topology) validate() error {
	var errs []error
	seen := map[string]bool{}
	for _, c := range t.Consumers {
		errs = append(errs, c.validate(seen))
	}
	for _, ch := range t.Channels {
		if ch.Name == "" || ch.Topic == "" {
			errs = append(errs, fmt.Errorf("%w: KafkaChannel %q needs a name and a topic", ErrTopology, ch.Name))
		}
	}
	for _, s := range t.Sinks {
		if s.Name == "" || s.Topic == "" {
			errs = append(errs, fmt.Errorf("%w: KafkaSink %q needs a name and a topic", ErrTopology, s.Name))
		}
		if s.ContentMode != "" && s.ContentMode != ContentBinary && s.ContentMode != ContentStructured {
			errs = append(errs, fmt.Errorf("%w: KafkaSink %s: content mode %q", ErrTopology, s.Name, s.ContentMode))
		}
	}
	return errors.Join(errs...)
}

func (c Consumer) validate(seen map[string]bool) error {
	id := c.ID()
	switch {
	case c.Kind != KindKafkaSource && c.Kind != KindSubscription:
		return fmt.Errorf("%w: %s: kind %q", ErrTopology, id, c.Kind)
	case c.Name == "" || c.Topic == "" || c.Group == "":
		return fmt.Errorf("%w: %s needs a name, a topic and a consumer group", ErrTopology, id)
	case seen[id]:
		return fmt.Errorf("%w: %s appears twice", ErrTopology, id)
	case c.Ordering != "" && c.Ordering != Ordered && c.Ordering != Unordered:
		return fmt.Errorf("%w: %s: ordering %q", ErrTopology, id, c.Ordering)
	case c.Delivery.BackoffPolicy != "" && c.Delivery.BackoffPolicy != BackoffExponential &&
		c.Delivery.BackoffPolicy != BackoffLinear:
		return fmt.Errorf("%w: %s: backoff policy %q", ErrTopology, id, c.Delivery.BackoffPolicy)
	case c.Delivery.Retry < 0 || c.Delivery.BackoffDelay < 0 || c.Delivery.Timeout < 0:
		return fmt.Errorf("%w: %s: negative retry, backoff delay or timeout", ErrTopology, id)
	}
	seen[id] = true
	return nil
}
