package manifest

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kafkaconfig "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/config"
	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkamessagingv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1beta1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// byName returns the item called name, or nil.
func byName[P Resource](items []P, name string) P {
	for _, it := range items {
		if it.GetName() == name {
			return it
		}
	}
	var zero P
	return zero
}

// Service returns the Knative Service called name, or nil.
func (s *Set) Service(name string) *servingv1.Service { return byName(s.Services, name) }

// KafkaSource returns the KafkaSource called name, or nil.
func (s *Set) KafkaSource(name string) *kafkasourcesv1beta1.KafkaSource {
	return byName(s.KafkaSources, name)
}

// KafkaSink returns the KafkaSink called name, or nil.
func (s *Set) KafkaSink(name string) *kafkaeventingv1alpha1.KafkaSink {
	return byName(s.KafkaSinks, name)
}

// KafkaChannel returns the KafkaChannel called name, or nil.
func (s *Set) KafkaChannel(name string) *kafkamessagingv1beta1.KafkaChannel {
	return byName(s.KafkaChannels, name)
}

// Subscription returns the Subscription called name, or nil.
func (s *Set) Subscription(name string) *messagingv1.Subscription {
	return byName(s.Subscriptions, name)
}

// ConfigMap returns the ConfigMap called name, or nil.
func (s *Set) ConfigMap(name string) *corev1.ConfigMap { return byName(s.ConfigMaps, name) }

// Secret returns the Secret (template) called name, or nil.
func (s *Set) Secret(name string) *corev1.Secret { return byName(s.Secrets, name) }

// Deployment returns the Deployment called name, or nil.
func (s *Set) Deployment(name string) *appsv1.Deployment { return byName(s.Deployments, name) }

// Lookup finds the object with the given apiVersion, kind, namespace and name, as a reference such as
// a KafkaSource's sink names it.
func (s *Set) Lookup(apiVersion, kind, namespace, name string) (Object, bool) {
	for _, o := range s.Objects {
		if o.GVK.GroupVersion().String() == apiVersion && o.GVK.Kind == kind &&
			o.Resource.GetNamespace() == namespace && o.Resource.GetName() == name {
			return o, true
		}
	}
	return Object{}, false
}

// ChannelTopic returns the Kafka topic behind a KafkaChannel, computed with Knative's default channel
// topic template ("knative-messaging-kafka.<namespace>.<name>"), as the Kafka channel controller does.
func ChannelTopic(ch *kafkamessagingv1beta1.KafkaChannel) (string, error) {
	topic, err := kafkaconfig.DefaultFeaturesConfig().ExecuteChannelsTopicTemplate(ch.ObjectMeta)
	if err != nil {
		return "", fmt.Errorf("topic of KafkaChannel %s/%s: %w", ch.Namespace, ch.Name, err)
	}
	return topic, nil
}
