package manifest

import (
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// checkReferences requires every reference between objects to resolve inside the Set.
func (s *Set) checkReferences() []error {
	var errs []error
	for _, o := range s.Objects {
		errs = append(errs, s.objectReferences(o)...)
	}
	for _, p := range s.podSpecs() {
		errs = append(errs, s.envReferences(p)...)
	}
	return errs
}

// objectReferences checks the references one object makes, by kind.
func (s *Set) objectReferences(o Object) []error {
	switch r := o.Resource.(type) {
	case *kafkasourcesv1beta1.KafkaSource:
		return errorsOf(
			s.destination(o, "spec.sink", &r.Spec.Sink),
			s.destination(o, "spec.delivery.deadLetterSink", deadLetterSink(r.Spec.Delivery)))
	case *messagingv1.Subscription:
		return errorsOf(
			s.channel(o, r.Spec.Channel),
			s.destination(o, "spec.subscriber", r.Spec.Subscriber),
			s.destination(o, "spec.reply", r.Spec.Reply),
			s.destination(o, "spec.delivery.deadLetterSink", deadLetterSink(r.Spec.Delivery)))
	case *rbacv1.RoleBinding:
		return s.roleBindingReferences(o, r)
	case *policyv1.PodDisruptionBudget:
		return errorsOf(s.pdbSelects(o, r))
	case *appsv1.Deployment:
		return errorsOf(deploymentSelects(o, r), s.serviceAccount(o, r.Spec.Template.Spec.ServiceAccountName))
	}
	return nil
}

// errorsOf drops the nil errors.
func errorsOf(errs ...error) []error {
	return slices.DeleteFunc(errs, func(err error) bool { return err == nil })
}

// deadLetterSink returns a delivery spec's dead-letter sink, or nil.
func deadLetterSink(d *eventingduckv1.DeliverySpec) *duckv1.Destination {
	if d == nil {
		return nil
	}
	return d.DeadLetterSink
}

// destination requires an optional Knative destination to be a reference to an object of the Set.
func (s *Set) destination(o Object, field string, d *duckv1.Destination) error {
	if d == nil || (d.Ref == nil && d.URI == nil) {
		return nil
	}
	if d.Ref == nil {
		return fmt.Errorf("%s: %s: %w: URI %s is not a reference to an object of the manifests",
			o, field, ErrReference, d.URI)
	}
	return s.ref(o, field, d.Ref.APIVersion, d.Ref.Kind, d.Ref.Namespace, d.Ref.Name)
}

// channel requires a Subscription's channel to be in the Set.
func (s *Set) channel(o Object, ch duckv1.KReference) error {
	return s.ref(o, "spec.channel", ch.APIVersion, ch.Kind, ch.Namespace, ch.Name)
}

// ref requires the named object in the Set; an empty namespace means the referring object's.
func (s *Set) ref(o Object, field, apiVersion, kind, namespace, name string) error {
	if namespace == "" {
		namespace = o.Resource.GetNamespace()
	}
	if _, ok := s.Lookup(apiVersion, kind, namespace, name); !ok {
		return fmt.Errorf("%s: %s: %w: %s %s/%s (%s) is not in the manifests",
			o, field, ErrReference, kind, namespace, name, apiVersion)
	}
	return nil
}

// serviceAccount requires a pod's service account in the Set, unless it is the namespace's default.
func (s *Set) serviceAccount(o Object, name string) error {
	if name == "" || name == "default" {
		return nil
	}
	return s.ref(o, "spec.template.spec.serviceAccountName", "v1", "ServiceAccount", "", name)
}

// roleBindingReferences requires a RoleBinding's Role and ServiceAccounts in the Set.
func (s *Set) roleBindingReferences(o Object, rb *rbacv1.RoleBinding) []error {
	errs := errorsOf(s.ref(o, "roleRef", rbacv1.SchemeGroupVersion.String(), rb.RoleRef.Kind, "", rb.RoleRef.Name))
	for i, subj := range rb.Subjects {
		if subj.Kind != rbacv1.ServiceAccountKind {
			continue
		}
		errs = append(errs, errorsOf(s.ref(o, fmt.Sprintf("subjects[%d]", i), "v1", subj.Kind, subj.Namespace, subj.Name))...)
	}
	return errs
}

// pdbSelects requires a PodDisruptionBudget to select the pods of some Deployment of the Set.
func (s *Set) pdbSelects(o Object, pdb *policyv1.PodDisruptionBudget) error {
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || pdb.Spec.Selector == nil || sel.Empty() {
		return fmt.Errorf("%s: spec.selector: %w: missing or invalid selector", o, ErrReference)
	}
	for _, d := range s.Deployments {
		if d.Namespace == pdb.Namespace && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			return nil
		}
	}
	return fmt.Errorf("%s: spec.selector: %w: %s selects no Deployment's pods", o, ErrReference, sel)
}

// deploymentSelects requires a Deployment's selector to match its own pod template, as the API does.
func deploymentSelects(o Object, d *appsv1.Deployment) error {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || d.Spec.Selector == nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		return fmt.Errorf("%s: spec.selector: %w: does not select the pod template's labels", o, ErrReference)
	}
	return nil
}

// envReferences requires every ConfigMap and Secret a pod reads, and every key, to be in the Set.
func (s *Set) envReferences(p podSpecOf) []error {
	var errs []error
	for _, c := range containers(p.spec) {
		for _, e := range c.Env {
			if err := s.envVarSource(e.ValueFrom); err != nil {
				errs = append(errs, fmt.Errorf("%s: container %q: env %s: %w", p.owner, c.Name, e.Name, err))
			}
		}
		for _, e := range c.EnvFrom {
			if err := s.envFromSource(e); err != nil {
				errs = append(errs, fmt.Errorf("%s: container %q: envFrom: %w", p.owner, c.Name, err))
			}
		}
	}
	return errs
}

// envVarSource checks one env var's configMapKeyRef or secretKeyRef; optional ones may be missing.
func (s *Set) envVarSource(src *corev1.EnvVarSource) error {
	switch {
	case src == nil:
		return nil
	case src.ConfigMapKeyRef != nil && !isTrue(src.ConfigMapKeyRef.Optional):
		return s.configMapKey(src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key)
	case src.SecretKeyRef != nil && !isTrue(src.SecretKeyRef.Optional):
		return s.secretKey(src.SecretKeyRef.Name, src.SecretKeyRef.Key)
	}
	return nil
}

// envFromSource checks an envFrom's ConfigMap or Secret; optional ones may be missing.
func (s *Set) envFromSource(src corev1.EnvFromSource) error {
	if ref := src.ConfigMapRef; ref != nil && !isTrue(ref.Optional) && s.ConfigMap(ref.Name) == nil {
		return fmt.Errorf("%w: ConfigMap %s is not in the manifests", ErrReference, ref.Name)
	}
	if ref := src.SecretRef; ref != nil && !isTrue(ref.Optional) && s.Secret(ref.Name) == nil {
		return fmt.Errorf("%w: Secret %s is not in the manifests", ErrReference, ref.Name)
	}
	return nil
}

// configMapKey requires a ConfigMap of the Set with the key.
func (s *Set) configMapKey(name, key string) error {
	cm := s.ConfigMap(name)
	if cm == nil {
		return fmt.Errorf("%w: ConfigMap %s is not in the manifests", ErrReference, name)
	}
	if _, ok := cm.Data[key]; !ok {
		if _, ok := cm.BinaryData[key]; !ok {
			return fmt.Errorf("%w: ConfigMap %s has no key %q", ErrReference, name, key)
		}
	}
	return nil
}

// secretKey requires a Secret (template) of the Set with the key.
func (s *Set) secretKey(name, key string) error {
	sec := s.Secret(name)
	if sec == nil {
		return fmt.Errorf("%w: Secret %s is not in the manifests", ErrReference, name)
	}
	if _, ok := sec.StringData[key]; !ok {
		if _, ok := sec.Data[key]; !ok {
			return fmt.Errorf("%w: Secret %s has no key %q", ErrReference, name, key)
		}
	}
	return nil
}
