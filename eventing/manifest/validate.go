package manifest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkamessagingv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1beta1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/pkg/apis"
	servingconfig "knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// Categories of validation failures; every error Validate returns wraps one of them.
var (
	// ErrKnative marks an object Knative's validating webhook would reject.
	ErrKnative = errors.New("rejected by knative validation")
	// ErrKnativeWarning marks an object Knative's webhook would admit with a warning.
	ErrKnativeWarning = errors.New("knative validation warns")
	// ErrPodSecurity marks a pod that breaks the restricted Pod Security Standard.
	ErrPodSecurity = errors.New("violates the restricted pod security standard")
	// ErrImage marks an image that is not a ko:// path to a main package of this module.
	ErrImage = errors.New("bad image")
	// ErrReference marks a reference to an object, or a key of one, that the manifests do not hold.
	ErrReference = errors.New("dangling reference")
	// ErrDelivery marks a delivery spec without an explicit retry schedule.
	ErrDelivery = errors.New("incomplete delivery")
	// ErrDeadLetter marks a KafkaSource or Subscription without a durable (KafkaSink) dead-letter sink.
	ErrDeadLetter = errors.New("no durable dead-letter sink")
	// ErrNamespace marks an object outside the manifests' namespace, or a duplicate.
	ErrNamespace = errors.New("bad namespace or name")
	// ErrMemoryLimit marks a container whose KAWASE_MEMORY_LIMIT is missing or differs from its
	// memory limit (Knative allows no resourceFieldRef to copy it, so the value is written out).
	ErrMemoryLimit = errors.New("KAWASE_MEMORY_LIMIT does not match the memory limit")
)

// koPrefix starts an image reference that ko resolves to an image built from a Go package.
const koPrefix = "ko://"

// resolvedImage stands in for a ko:// reference during Knative validation: the webhook only ever
// sees the image ko pushed, never the ko:// path.
const resolvedImage = "ko.local/kawase@sha256:0000000000000000000000000000000000000000000000000000000000000000"

// Validate checks the Set as a cluster and ko would, and more. Each Knative object (on a copy) is
// defaulted and validated with the context Knative's webhooks give it by default: default
// config-features / config-defaults / config-autoscaler (unless ctx already carries them), a create
// operation, and for the Kafka kinds cross-namespace references allowed. Any error or warning fails.
// A KafkaSource's spec.delivery is validated too, although the Kafka webhook skips it. Then every pod
// must meet the restricted Pod Security Standard, every image must be a ko:// main package of this
// module, every reference must resolve inside the Set, every KafkaSource and Subscription must have
// an explicit retry schedule and a KafkaSink dead-letter sink, every object must live in a
// Namespace of the Set, and every container with a memory limit must tell kawase that limit in
// KAWASE_MEMORY_LIMIT. All problems are returned, joined.
func (s *Set) Validate(ctx context.Context) error {
	errs := s.checkKnative(ctx)
	for _, check := range []func() []error{
		s.checkNamespaces, s.checkPodSecurity, s.checkImages, s.checkReferences, s.checkDeliveries,
		s.checkMemoryLimits,
	} {
		errs = append(errs, check()...)
	}
	return errors.Join(errs...)
}

// knativeResource is an object with Knative defaulting and validation.
type knativeResource interface {
	Resource
	apis.Defaultable
	apis.Validatable
}

// checkKnative runs Knative's SetDefaults and Validate on a copy of every Knative object.
func (s *Set) checkKnative(ctx context.Context) []error {
	var errs []error
	for _, o := range s.Objects {
		kr, ok := o.Resource.(knativeResource)
		if !ok {
			continue
		}
		if err := validateKnative(webhookContext(ctx, o.GVK), kr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o, err))
		}
	}
	return errs
}

// validateKnative defaults and validates a copy of r, as the admission webhooks do on create.
func validateKnative(ctx context.Context, r knativeResource) error {
	c := r.DeepCopyObject().(knativeResource)
	if svc, ok := c.(*servingv1.Service); ok {
		resolveKoImages(&svc.Spec.Template.Spec.PodSpec)
	}
	c.SetDefaults(ctx)
	fe := c.Validate(ctx)
	if ks, ok := c.(*kafkasourcesv1beta1.KafkaSource); ok {
		fe = fe.Also(ks.Spec.Delivery.Validate(apis.WithinParent(ctx, ks.ObjectMeta)).ViaField("spec.delivery"))
	}
	return fieldErrors(fe)
}

// fieldErrors turns Knative's diagnostics into an error: errors wrap ErrKnative, warnings wrap
// ErrKnativeWarning.
func fieldErrors(fe *apis.FieldError) error {
	var errs []error
	if e := fe.Filter(apis.ErrorLevel); !isEmpty(e) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrKnative, oneLine(e)))
	}
	if w := fe.Filter(apis.WarningLevel); !isEmpty(w) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrKnativeWarning, oneLine(w)))
	}
	return errors.Join(errs...)
}

func isEmpty(fe *apis.FieldError) bool { return fe == nil || fe.Error() == "" }

// oneLine joins Knative's multi-line message so each problem reads on one line.
func oneLine(fe *apis.FieldError) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(fe.Error(), "\n", "; ")), " ")
}

// kafkaWebhookKinds are the kinds Knative's Kafka webhook (webhook-kafka) admits.
var kafkaWebhookKinds = map[schema.GroupVersionKind]bool{
	kafkasourcesv1beta1.SchemeGroupVersion.WithKind("KafkaSource"):    true,
	kafkaeventingv1alpha1.SchemeGroupVersion.WithKind("KafkaSink"):    true,
	kafkamessagingv1beta1.SchemeGroupVersion.WithKind("KafkaChannel"): true,
}

// webhookContext gives ctx what the admission webhook of gvk adds to it by default.
func webhookContext(ctx context.Context, gvk schema.GroupVersionKind) context.Context {
	ctx = apis.WithinCreate(ctx)
	switch {
	case gvk.Group == servingv1.SchemeGroupVersion.Group:
		return servingconfig.ToContext(ctx, servingconfig.FromContextOrDefaults(ctx))
	case kafkaWebhookKinds[gvk]:
		return apis.AllowDifferentNamespace(withFeatures(ctx))
	default:
		// Subscription: Knative Eventing's webhook.
		return withFeatures(ctx)
	}
}

// withFeatures attaches Knative Eventing's default feature flags (config-features), unless ctx has
// flags already. Without any flags Knative treats delivery.timeout as a disallowed field.
func withFeatures(ctx context.Context) context.Context {
	if feature.FromContext(ctx) != nil {
		return ctx
	}
	flags, _ := feature.NewFlagsConfigFromMap(map[string]string{}) // never fails for an empty map
	return feature.ToContext(ctx, flags)
}

// resolveKoImages replaces ko:// images with a resolved-looking reference, as ko does before apply.
func resolveKoImages(ps *corev1.PodSpec) {
	for i := range ps.Containers {
		if strings.HasPrefix(ps.Containers[i].Image, koPrefix) {
			ps.Containers[i].Image = resolvedImage
		}
	}
	for i := range ps.InitContainers {
		if strings.HasPrefix(ps.InitContainers[i].Image, koPrefix) {
			ps.InitContainers[i].Image = resolvedImage
		}
	}
}
