package dispatch

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkamessagingv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1beta1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/kawase-fx/kawase/config"
	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/manifest"
)

const ns = "kawase"

func svcRef(name string) duckv1.Destination {
	return duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: name}}
}

func sinkRef(name string) *duckv1.Destination {
	return &duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "eventing.knative.dev/v1alpha1", Kind: "KafkaSink", Name: name}}
}

func kafkaSource(name string, mutate func(*kafkasourcesv1beta1.KafkaSource)) *kafkasourcesv1beta1.KafkaSource {
	ks := &kafkasourcesv1beta1.KafkaSource{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: kafkasourcesv1beta1.KafkaSourceSpec{Topics: []string{"kawase.rates"}, ConsumerGroup: "g-" + name,
			InitialOffset: kafkasourcesv1beta1.OffsetEarliest, SourceSpec: duckv1.SourceSpec{Sink: svcRef("ratekeeper")}}}
	if mutate != nil {
		mutate(ks)
	}
	return ks
}

func channelSet(sub *messagingv1.Subscription, chDelivery *eventingduckv1.DeliverySpec) *manifest.Set {
	ch := &kafkamessagingv1beta1.KafkaChannel{ObjectMeta: metav1.ObjectMeta{Name: "executions", Namespace: ns}}
	ch.Spec.Delivery = chDelivery
	return &manifest.Set{KafkaChannels: []*kafkamessagingv1beta1.KafkaChannel{ch},
		Subscriptions: []*messagingv1.Subscription{sub}}
}

func subscription(delivery *eventingduckv1.DeliverySpec) *messagingv1.Subscription {
	relay := svcRef("relay")
	return &messagingv1.Subscription{ObjectMeta: metav1.ObjectMeta{Name: "executions-to-relay", Namespace: ns},
		Spec: messagingv1.SubscriptionSpec{
			Channel:    duckv1.KReference{APIVersion: "messaging.knative.dev/v1beta1", Kind: "KafkaChannel", Name: "executions"},
			Subscriber: &relay, Delivery: delivery}}
}

// TestFromManifestAppliesKnativeDefaults converts objects the way Knative's controllers would: a
// KafkaSource without delivery gets the source reconciler's schedule, retry without backoffDelay gets
// 200ms, ISO 8601 durations parse to milliseconds, a Subscription's delivery is merged over its
// channel's and it is ordered, a KafkaSink defaults to binary.
func TestFromManifestAppliesKnativeDefaults(t *testing.T) {
	linear := eventingduckv1.BackoffPolicyLinear
	set := channelSet(
		subscription(&eventingduckv1.DeliverySpec{Retry: ptr.To[int32](20), BackoffPolicy: &linear}),
		&eventingduckv1.DeliverySpec{Retry: ptr.To[int32](2), Timeout: ptr.To("PT10S"), BackoffDelay: ptr.To("PT0.5S"),
			DeadLetterSink: sinkRef("deadletters")})
	set.KafkaSources = []*kafkasourcesv1beta1.KafkaSource{
		kafkaSource("bare", nil),
		kafkaSource("explicit", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ordering := kafkasourcesv1beta1.Unordered
			ks.Spec.Ordering = &ordering
			ks.Spec.Delivery = &eventingduckv1.DeliverySpec{Retry: ptr.To[int32](3), Timeout: ptr.To("PT2S")}
			ks.Spec.CloudEventOverrides = &duckv1.CloudEventOverrides{Extensions: map[string]string{"env": "dev"}}
			ks.Annotations = map[string]string{AnnotationFetchLinger: "7"}
		}),
	}
	set.KafkaSinks = []*kafkaeventingv1alpha1.KafkaSink{{ObjectMeta: metav1.ObjectMeta{Name: "deadletters", Namespace: ns},
		Spec: kafkaeventingv1alpha1.KafkaSinkSpec{Topic: "kawase.deadletters"}}}
	top, err := FromManifest(set)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]Consumer{}
	for _, c := range top.Consumers {
		byID[c.ID()] = c
	}
	bare := byID["KafkaSource/bare"]
	if bare.Delivery.Retry != 10 || bare.Delivery.BackoffPolicy != BackoffExponential ||
		bare.Delivery.BackoffDelay != 300*time.Millisecond || bare.Delivery.Timeout != 600*time.Second ||
		bare.Ordering != Ordered || bare.Group != "g-bare" || bare.Topic != "kawase.rates" ||
		bare.Subscriber != (Destination{Kind: KindService, Name: "ratekeeper"}) || bare.FetchLinger != 0 ||
		bare.InvalidSource != "/apis/v1/namespaces/kawase/kafkasources/bare#kawase.rates" {
		t.Errorf("bare KafkaSource: %+v", bare)
	}
	explicit := byID["KafkaSource/explicit"]
	if explicit.Ordering != Unordered || explicit.Delivery.BackoffDelay != backoffDelayDefaultMs*time.Millisecond ||
		explicit.Delivery.Timeout != 2*time.Second || explicit.Delivery.BackoffPolicy != BackoffExponential ||
		explicit.Delivery.DeadLetter != nil || explicit.Extensions["env"] != "dev" || explicit.FetchLinger != 7*time.Millisecond {
		t.Errorf("explicit KafkaSource: %+v", explicit)
	}
	sub := byID["Subscription/executions-to-relay"]
	if sub.Topic != eventing.TopicExecutions || sub.Group != "kafka.kawase.executions.executions-to-relay" ||
		sub.Ordering != Ordered || sub.InvalidSource != "" || sub.Delivery.Retry != 20 ||
		sub.Delivery.BackoffPolicy != BackoffLinear || sub.Delivery.BackoffDelay != 500*time.Millisecond ||
		sub.Delivery.Timeout != 10*time.Second || sub.Delivery.DeadLetter == nil ||
		*sub.Delivery.DeadLetter != (Destination{Kind: KindKafkaSink, Name: "deadletters"}) {
		t.Errorf("subscription: %+v (dead letter %v)", sub, sub.Delivery.DeadLetter)
	}
	if len(top.Channels) != 1 || top.Channels[0] != (Channel{Name: "executions", Topic: eventing.TopicExecutions}) {
		t.Errorf("channels: %+v", top.Channels)
	}
	if len(top.Sinks) != 1 || top.Sinks[0] != (Sink{Name: "deadletters", Topic: "kawase.deadletters", ContentMode: ContentBinary}) {
		t.Errorf("sinks: %+v", top.Sinks)
	}
}

// TestFromManifestRefusesWhatItCannotRun: differences from Knative are errors, not silent.
func TestFromManifestRefusesWhatItCannotRun(t *testing.T) {
	cases := map[string]*manifest.Set{
		"initialOffset latest": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Spec.InitialOffset = kafkasourcesv1beta1.OffsetLatest
		})}},
		"initialOffset defaulted": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Spec.InitialOffset = ""
		})}},
		"two topics": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Spec.Topics = []string{"a", "b"}
		})}},
		"bad duration": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Spec.Delivery = &eventingduckv1.DeliverySpec{Retry: ptr.To[int32](1), BackoffDelay: ptr.To("3 seconds")}
		})}},
		"linger not a number": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Annotations = map[string]string{AnnotationFetchLinger: "5ms"}
		})}},
		"linger too long": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Annotations = map[string]string{AnnotationFetchLinger: "51"}
		})}},
		"no sink": {KafkaSources: []*kafkasourcesv1beta1.KafkaSource{kafkaSource("x", func(ks *kafkasourcesv1beta1.KafkaSource) {
			ks.Spec.Sink = duckv1.Destination{}
		})}},
		"reply": func() *manifest.Set {
			sub := subscription(nil)
			sub.Spec.Reply = sinkRef("deadletters")
			return channelSet(sub, nil)
		}(),
		"missing channel": {Subscriptions: []*messagingv1.Subscription{subscription(nil)}},
	}
	for name, set := range cases {
		if _, err := FromManifest(set); !errors.Is(err, ErrTopology) {
			t.Errorf("%s: err = %v, want ErrTopology", name, err)
		}
	}
}

// TestFromManifestReadsConfig converts the real manifests: every KafkaSource and Subscription becomes a
// consumer of its topic with a dead-letter KafkaSink, and every reference resolves.
func TestFromManifestReadsConfig(t *testing.T) {
	set, err := manifest.Load(config.FS)
	if err != nil {
		t.Fatal(err)
	}
	top, err := FromManifest(set)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(set.KafkaSources) + len(set.Subscriptions); len(top.Consumers) != want || want == 0 {
		t.Fatalf("%d consumers, want %d", len(top.Consumers), want)
	}
	for _, c := range top.Consumers {
		if c.Delivery.DeadLetter == nil || c.Delivery.DeadLetter.Kind != KindKafkaSink {
			t.Errorf("%s has no KafkaSink dead-letter sink", c.ID())
		}
		// Only the rates may wait for company; a command's wait is a trader's.
		if wantLinger := c.Topic == eventing.TopicRates; (c.FetchLinger > 0) != wantLinger {
			t.Errorf("%s of %s lingers %v", c.ID(), c.Topic, c.FetchLinger)
		}
	}
	resolver := func(kind, name string) (string, error) { return "http://127.0.0.1:1/" + kind + "/" + name, nil }
	d, err := New(Config{Brokers: []string{"127.0.0.1:1"}, Resolve: resolver}, top)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Error(err)
	}
}
