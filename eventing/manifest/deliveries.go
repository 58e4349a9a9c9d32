package manifest

import (
	"fmt"
	"slices"
	"strings"

	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// checkDeliveries requires every KafkaSource and Subscription to spell out its retry schedule and to
// dead-letter into a KafkaSink of the Set whose topic is not one the object itself consumes.
func (s *Set) checkDeliveries() []error {
	var errs []error
	for _, o := range s.Objects {
		switch r := o.Resource.(type) {
		case *kafkasourcesv1beta1.KafkaSource:
			errs = append(errs, s.delivery(o, r.Spec.Delivery, r.Spec.Topics)...)
		case *messagingv1.Subscription:
			errs = append(errs, s.delivery(o, r.Spec.Delivery, s.subscriptionTopics(r))...)
		}
	}
	return errs
}

// delivery checks one delivery spec; consumed are the topics its owner reads.
func (s *Set) delivery(o Object, d *eventingduckv1.DeliverySpec, consumed []string) []error {
	if d == nil {
		return []error{
			fmt.Errorf("%s: %w: spec.delivery is not set", o, ErrDelivery),
			fmt.Errorf("%s: %w: spec.delivery.deadLetterSink is not set", o, ErrDeadLetter),
		}
	}
	var missing []string
	for field, set := range map[string]bool{
		"retry": d.Retry != nil, "backoffPolicy": d.BackoffPolicy != nil,
		"backoffDelay": d.BackoffDelay != nil, "timeout": d.Timeout != nil,
	} {
		if !set {
			missing = append(missing, field)
		}
	}
	slices.Sort(missing)
	var errs []error
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("%s: %w: spec.delivery does not set %s", o, ErrDelivery, strings.Join(missing, ", ")))
	}
	return append(errs, errorsOf(s.deadLetter(o, d.DeadLetterSink, consumed))...)
}

// deadLetter requires a dead-letter sink that is a KafkaSink writing to a topic other than consumed.
func (s *Set) deadLetter(o Object, d *duckv1.Destination, consumed []string) error {
	if d == nil || d.Ref == nil {
		return fmt.Errorf("%s: %w: spec.delivery.deadLetterSink must reference a KafkaSink", o, ErrDeadLetter)
	}
	ref := d.Ref
	if ref.Kind != "KafkaSink" || ref.APIVersion != kafkaeventingv1alpha1.SchemeGroupVersion.String() {
		return fmt.Errorf("%s: %w: spec.delivery.deadLetterSink is a %s (%s), not a KafkaSink (%s)",
			o, ErrDeadLetter, ref.Kind, ref.APIVersion, kafkaeventingv1alpha1.SchemeGroupVersion)
	}
	sink := s.KafkaSink(ref.Name)
	if sink == nil {
		return nil // dangling: checkReferences reports it
	}
	if slices.Contains(consumed, sink.Spec.Topic) {
		return fmt.Errorf("%s: %w: KafkaSink %s writes to %s, a topic this object consumes, so a failing event would loop",
			o, ErrDeadLetter, sink.Name, sink.Spec.Topic)
	}
	return nil
}

// subscriptionTopics returns the topic behind a Subscription's KafkaChannel, if the Set has it.
func (s *Set) subscriptionTopics(sub *messagingv1.Subscription) []string {
	ch := s.KafkaChannel(sub.Spec.Channel.Name)
	if ch == nil {
		return nil
	}
	topic, err := ChannelTopic(ch)
	if err != nil {
		return nil
	}
	return []string{topic}
}
