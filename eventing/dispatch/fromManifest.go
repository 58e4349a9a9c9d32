package dispatch

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/rickb777/date/period"
	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkamessagingv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1beta1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/kawase-fx/kawase/eventing/manifest"
)

// Knative's defaults where a manifest leaves delivery fields out.
const (
	// backoffDelayDefaultMs is the backoff unit when retry is set but backoffDelay is not (the
	// consumer group reconciler's default).
	backoffDelayDefaultMs = 200
	// A KafkaSource without spec.delivery gets this schedule from the source reconciler.
	sourceRetryCountDefault     = 10
	sourceBackoffDelayDefaultMs = 300
	sourceTimeoutDefaultMs      = 600_000
	// keyTypeString is the only kafkasources key type the local dispatcher decodes (Knative's default).
	keyTypeString = "string"
	// fetchLingerMsMax bounds AnnotationFetchLinger: a linger is meant to gather records arriving a
	// millisecond apart, not to hold them back noticeably.
	fetchLingerMsMax = 50
)

// AnnotationFetchLinger on a KafkaSource sets, in milliseconds, its Consumer's FetchLinger. Only the
// local dispatcher reads it; Knative's data plane ignores it. It suits a busy topic whose records
// may wait a few milliseconds (rates for the ratekeeper), not one whose latency is the user's
// (commands).
const AnnotationFetchLinger = "kawase.dev/dev-fetch-linger-ms"

// FromManifest reads the Topology of the dispatcher from the manifests: every KafkaSource and every
// Subscription (to a KafkaChannel of the set) becomes a Consumer, every KafkaChannel a Channel and every
// KafkaSink a Sink, with the defaults Knative's controllers would fill in. What the local dispatcher
// cannot run as Knative would (several topics per source, initialOffset latest, a Subscription reply)
// is an error wrapping ErrTopology rather than a silent difference.
func FromManifest(set *manifest.Set) (Topology, error) {
	var t Topology
	var errs []error
	for _, ks := range set.KafkaSources {
		c, err := sourceConsumer(ks)
		errs = append(errs, err)
		t.Consumers = append(t.Consumers, c)
	}
	for _, sub := range set.Subscriptions {
		c, err := subscriptionConsumer(set, sub)
		errs = append(errs, err)
		t.Consumers = append(t.Consumers, c)
	}
	for _, ch := range set.KafkaChannels {
		topic, err := manifest.ChannelTopic(ch)
		errs = append(errs, err)
		t.Channels = append(t.Channels, Channel{Name: ch.Name, Topic: topic})
	}
	for _, ks := range set.KafkaSinks {
		t.Sinks = append(t.Sinks, kafkaSink(ks))
	}
	if err := errors.Join(errs...); err != nil {
		return Topology{}, err
	}
	return t, nil
}

// sourceConsumer converts a KafkaSource as Knative's source reconciler does.
func sourceConsumer(ks *kafkasourcesv1beta1.KafkaSource) (Consumer, error) {
	id := KindKafkaSource + "/" + ks.Name
	spec := ks.Spec
	if len(spec.Topics) != 1 {
		return Consumer{}, fmt.Errorf("%w: %s: the local dispatcher reads exactly one topic per KafkaSource, not %d",
			ErrTopology, id, len(spec.Topics))
	}
	if spec.InitialOffset != kafkasourcesv1beta1.OffsetEarliest {
		return Consumer{}, fmt.Errorf("%w: %s: initialOffset %q (Knative's default is latest): the local dispatcher "+
			"starts new consumer groups at the earliest offset only; set initialOffset: earliest", ErrTopology, id, spec.InitialOffset)
	}
	if kt, ok := ks.Labels[kafkasourcesv1beta1.KafkaKeyTypeLabel]; ok && kt != keyTypeString {
		return Consumer{}, fmt.Errorf("%w: %s: key type %q: the local dispatcher decodes string keys only", ErrTopology, id, kt)
	}
	c := Consumer{Kind: KindKafkaSource, Name: ks.Name, Topic: spec.Topics[0], Group: spec.ConsumerGroup,
		Ordering: Ordered, InvalidSource: kafkasourcesv1beta1.KafkaEventSource(ks.Namespace, ks.Name, spec.Topics[0])}
	if c.Group == "" {
		// Knative defaults to a random "knative-kafka-source-<uuid>"; a stable name keeps local restarts
		// on the same group.
		c.Group = "knative-kafka-source-" + ks.Namespace + "-" + ks.Name
	}
	if spec.Ordering != nil {
		c.Ordering = Ordering(*spec.Ordering)
	}
	if spec.CloudEventOverrides != nil {
		c.Extensions = spec.CloudEventOverrides.Extensions
	}
	var err error
	if c.FetchLinger, err = fetchLinger(ks.Annotations[AnnotationFetchLinger]); err != nil {
		return Consumer{}, fmt.Errorf("%w: %s: annotation %s: %w", ErrTopology, id, AnnotationFetchLinger, err)
	}
	if c.Subscriber, err = destination(&spec.Sink); err != nil {
		return Consumer{}, fmt.Errorf("%w: %s: spec.sink: %w", ErrTopology, id, err)
	}
	if spec.Delivery == nil {
		c.Delivery = Delivery{Retry: sourceRetryCountDefault, BackoffPolicy: BackoffExponential,
			BackoffDelay: sourceBackoffDelayDefaultMs * time.Millisecond, Timeout: sourceTimeoutDefaultMs * time.Millisecond}
		return c, nil
	}
	if c.Delivery, err = delivery(spec.Delivery); err != nil {
		return Consumer{}, fmt.Errorf("%w: %s: spec.delivery: %w", ErrTopology, id, err)
	}
	return c, nil
}

// fetchLinger reads an AnnotationFetchLinger value; empty means none.
func fetchLinger(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	ms, err := strconv.Atoi(v)
	if err != nil || ms < 0 || ms > fetchLingerMsMax {
		return 0, fmt.Errorf("%q is not a whole number of milliseconds from 0 to %d", v, fetchLingerMsMax)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// subscriptionConsumer converts a Subscription to a KafkaChannel as Knative's channel reconciler does:
// ordered, the subscription's delivery merged over the channel's.
func subscriptionConsumer(set *manifest.Set, sub *messagingv1.Subscription) (Consumer, error) {
	id := KindSubscription + "/" + sub.Name
	ref := sub.Spec.Channel
	if ref.Kind != KindKafkaChannel || ref.APIVersion != kafkamessagingv1beta1.SchemeGroupVersion.String() {
		return Consumer{}, fmt.Errorf("%w: %s: channel %s (%s) is not a KafkaChannel", ErrTopology, id, ref.Name, ref.APIVersion)
	}
	ch := set.KafkaChannel(ref.Name)
	if ch == nil || (ref.Namespace != "" && ref.Namespace != ch.Namespace) {
		return Consumer{}, fmt.Errorf("%w: %s: KafkaChannel %s is not in the manifests", ErrTopology, id, ref.Name)
	}
	if sub.Spec.Reply != nil {
		return Consumer{}, fmt.Errorf("%w: %s: spec.reply is not supported by the local dispatcher", ErrTopology, id)
	}
	topic, err := manifest.ChannelTopic(ch)
	if err != nil {
		return Consumer{}, fmt.Errorf("%w: %s: %w", ErrTopology, id, err)
	}
	// Knative names the group after the subscription's UID, which manifests do not have.
	c := Consumer{Kind: KindSubscription, Name: sub.Name, Topic: topic, Ordering: Ordered,
		Group: fmt.Sprintf("kafka.%s.%s.%s", ch.Namespace, ch.Name, sub.Name)}
	if c.Subscriber, err = destination(sub.Spec.Subscriber); err != nil {
		return Consumer{}, fmt.Errorf("%w: %s: spec.subscriber: %w", ErrTopology, id, err)
	}
	if c.Delivery, err = delivery(mergeDelivery(sub.Spec.Delivery, ch.Spec.Delivery)); err != nil {
		return Consumer{}, fmt.Errorf("%w: %s: delivery: %w", ErrTopology, id, err)
	}
	return c, nil
}

// kafkaSink converts a KafkaSink; its content mode defaults to binary, as Knative's does.
func kafkaSink(ks *kafkaeventingv1alpha1.KafkaSink) Sink {
	s := Sink{Name: ks.Name, Topic: ks.Spec.Topic, ContentMode: ContentBinary}
	if ks.Spec.ContentMode != nil && *ks.Spec.ContentMode != "" {
		s.ContentMode = ContentMode(*ks.Spec.ContentMode)
	}
	return s
}

// delivery converts a DeliverySpec as Knative's EgressConfigFromDelivery does: the backoff only
// counts when retry is set; durations are ISO 8601 periods.
func delivery(d *eventingduckv1.DeliverySpec) (Delivery, error) {
	var out Delivery
	if d == nil {
		return out, nil
	}
	var err error
	if d.DeadLetterSink != nil {
		dl, err := destination(d.DeadLetterSink)
		if err != nil {
			return Delivery{}, fmt.Errorf("deadLetterSink: %w", err)
		}
		out.DeadLetter = &dl
	}
	if d.Retry != nil {
		out.Retry = int(*d.Retry)
		out.BackoffPolicy = BackoffExponential
		if d.BackoffPolicy != nil && *d.BackoffPolicy == eventingduckv1.BackoffPolicyLinear {
			out.BackoffPolicy = BackoffLinear
		}
		if out.BackoffDelay, err = isoDuration(d.BackoffDelay, backoffDelayDefaultMs*time.Millisecond); err != nil {
			return Delivery{}, fmt.Errorf("backoffDelay: %w", err)
		}
	}
	if out.Timeout, err = isoDuration(d.Timeout, 0); err != nil {
		return Delivery{}, fmt.Errorf("timeout: %w", err)
	}
	return out, nil
}

// mergeDelivery fills the fields sub leaves out from the channel's delivery (Knative's
// mergeDeliverySpecs).
func mergeDelivery(sub, channel *eventingduckv1.DeliverySpec) *eventingduckv1.DeliverySpec {
	if sub == nil {
		return channel
	}
	if channel == nil {
		return sub
	}
	d := sub.DeepCopy()
	if d.DeadLetterSink == nil {
		d.DeadLetterSink = channel.DeadLetterSink
	}
	if d.Retry == nil {
		d.Retry = channel.Retry
	}
	if d.Timeout == nil {
		d.Timeout = channel.Timeout
	}
	if d.BackoffPolicy == nil {
		d.BackoffPolicy = channel.BackoffPolicy
	}
	if d.BackoffDelay == nil {
		d.BackoffDelay = channel.BackoffDelay
	}
	return d
}

// isoDuration parses an ISO 8601 period such as "PT0.5S" to whole milliseconds, as Knative's
// DurationMillisFromISO8601String does; nil gives def.
func isoDuration(s *string, def time.Duration) (time.Duration, error) {
	if s == nil {
		return def, nil
	}
	p, err := period.Parse(*s, false)
	if err != nil {
		return 0, fmt.Errorf("parse duration %q: %w", *s, err)
	}
	d, _ := p.Duration() // Knative ignores the precision flag too
	return d.Abs().Truncate(time.Millisecond), nil
}

// destination converts a Knative destination: an object reference or an absolute URI.
func destination(d *duckv1.Destination) (Destination, error) {
	switch {
	case d == nil || (d.Ref == nil && d.URI == nil):
		return Destination{}, errors.New("no destination")
	case d.Ref != nil && d.URI != nil:
		return Destination{}, errors.New("a reference with a relative URI is not supported by the local dispatcher")
	case d.Ref != nil:
		return Destination{Kind: d.Ref.Kind, Name: d.Ref.Name}, nil
	case !d.URI.URL().IsAbs():
		return Destination{}, fmt.Errorf("URI %s is not absolute", d.URI)
	}
	return Destination{URL: d.URI.String()}, nil
}
