// Package manifest loads kawase's deployment manifests (the YAML in config/) into Knative's and
// Kubernetes' own Go API types and checks them the way a cluster would: strict decoding, Knative's
// defaulting and validation webhooks, the restricted Pod Security Standard, ko:// image paths, and
// references between objects. The local dispatcher reads its KafkaSources, KafkaChannels, Subscriptions
// and KafkaSinks from the same Set, so local mode runs exactly what the cluster runs.
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkamessagingv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1beta1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// FileGlobs select the manifest files of a directory; config.FS embeds the same set. Secret templates
// live in secrets/, which `ko apply -f config/` does not descend into, so a deploy never writes the
// placeholders over real secrets; they are applied once, by hand, after editing.
var FileGlobs = []string{"*.yaml", "secrets/*.yaml"}

// ErrDecode marks a document that is not a well-formed object of a kind kawase deploys: bad YAML, an
// unknown apiVersion/kind, or a field the Go API type does not have.
var ErrDecode = errors.New("manifest does not decode")

// Resource is any Kubernetes object of the Set: a typed API object with object metadata.
type Resource interface {
	runtime.Object
	metav1.Object
}

// Object is one document of the manifests, decoded.
type Object struct {
	// Origin says where the document came from, as "file.yaml#n" (n counts from 1).
	Origin string
	// GVK is the document's apiVersion and kind.
	GVK schema.GroupVersionKind
	// Resource is the typed object; the same pointer is in the Set's slice for its kind.
	Resource Resource
}

// String names the object for messages: origin, kind, namespace/name.
func (o Object) String() string {
	return fmt.Sprintf("%s %s %s/%s", o.Origin, o.GVK.Kind, o.Resource.GetNamespace(), o.Resource.GetName())
}

// Set is every object of the manifests, by kind, in file order. The typed slices share their pointers
// with Objects.
type Set struct {
	// Objects lists every document in file order (files sorted by name).
	Objects []Object

	// Namespaces holds the one namespace everything else lives in.
	Namespaces []*corev1.Namespace
	// ConfigMaps hold settings the containers read as environment variables.
	ConfigMaps []*corev1.ConfigMap
	// Secrets are templates with placeholder values, never real secrets.
	Secrets []*corev1.Secret
	// ServiceAccounts, Roles and RoleBindings give the feeder its leader-election Leases.
	ServiceAccounts []*corev1.ServiceAccount
	// Roles are namespaced RBAC roles (see ServiceAccounts).
	Roles []*rbacv1.Role
	// RoleBindings bind Roles to ServiceAccounts (see ServiceAccounts).
	RoleBindings []*rbacv1.RoleBinding
	// Deployments run what must never scale to zero: the feeder.
	Deployments []*appsv1.Deployment
	// PodDisruptionBudgets keep Deployment replicas alive through voluntary disruptions.
	PodDisruptionBudgets []*policyv1.PodDisruptionBudget

	// Services are the Knative Services (serving.knative.dev/v1), one per function.
	Services []*servingv1.Service
	// KafkaSources deliver Kafka topics to Services (sources.knative.dev/v1beta1).
	KafkaSources []*kafkasourcesv1beta1.KafkaSource
	// KafkaSinks write events to Kafka topics (eventing.knative.dev/v1alpha1).
	KafkaSinks []*kafkaeventingv1alpha1.KafkaSink
	// KafkaChannels are Kafka-backed channels (messaging.knative.dev/v1beta1).
	KafkaChannels []*kafkamessagingv1beta1.KafkaChannel
	// Subscriptions subscribe Services to channels (messaging.knative.dev/v1).
	Subscriptions []*messagingv1.Subscription

	// ModuleRoot is the directory of the go.mod that ko:// image paths resolve against. Empty means
	// the nearest go.mod at or above the working directory.
	ModuleRoot string
}

// kindHandler decodes one kind strictly and files it in the Set.
type kindHandler struct {
	decode func(doc []byte) (Resource, error)
	add    func(s *Set, r Resource)
}

// handle builds the kindHandler of the API type T, kept in the Set slice that field returns.
func handle[T any, P interface {
	*T
	Resource
}](field func(s *Set) *[]P) kindHandler {
	return kindHandler{
		decode: func(doc []byte) (Resource, error) {
			p := P(new(T))
			return p, decodeStrict(doc, p)
		},
		add: func(s *Set, r Resource) {
			slice := field(s)
			*slice = append(*slice, r.(P))
		},
	}
}

// kinds lists every kind the manifests may hold.
var kinds = map[schema.GroupVersionKind]kindHandler{
	corev1.SchemeGroupVersion.WithKind("Namespace"): handle(func(s *Set) *[]*corev1.Namespace { return &s.Namespaces }),
	corev1.SchemeGroupVersion.WithKind("ConfigMap"): handle(func(s *Set) *[]*corev1.ConfigMap { return &s.ConfigMaps }),
	corev1.SchemeGroupVersion.WithKind("Secret"):    handle(func(s *Set) *[]*corev1.Secret { return &s.Secrets }),
	corev1.SchemeGroupVersion.WithKind("ServiceAccount"): handle(
		func(s *Set) *[]*corev1.ServiceAccount { return &s.ServiceAccounts }),
	rbacv1.SchemeGroupVersion.WithKind("Role"):        handle(func(s *Set) *[]*rbacv1.Role { return &s.Roles }),
	rbacv1.SchemeGroupVersion.WithKind("RoleBinding"): handle(func(s *Set) *[]*rbacv1.RoleBinding { return &s.RoleBindings }),
	appsv1.SchemeGroupVersion.WithKind("Deployment"):  handle(func(s *Set) *[]*appsv1.Deployment { return &s.Deployments }),
	policyv1.SchemeGroupVersion.WithKind("PodDisruptionBudget"): handle(
		func(s *Set) *[]*policyv1.PodDisruptionBudget { return &s.PodDisruptionBudgets }),
	servingv1.SchemeGroupVersion.WithKind("Service"): handle(func(s *Set) *[]*servingv1.Service { return &s.Services }),
	kafkasourcesv1beta1.SchemeGroupVersion.WithKind("KafkaSource"): handle(
		func(s *Set) *[]*kafkasourcesv1beta1.KafkaSource { return &s.KafkaSources }),
	kafkaeventingv1alpha1.SchemeGroupVersion.WithKind("KafkaSink"): handle(
		func(s *Set) *[]*kafkaeventingv1alpha1.KafkaSink { return &s.KafkaSinks }),
	kafkamessagingv1beta1.SchemeGroupVersion.WithKind("KafkaChannel"): handle(
		func(s *Set) *[]*kafkamessagingv1beta1.KafkaChannel { return &s.KafkaChannels }),
	messagingv1.SchemeGroupVersion.WithKind("Subscription"): handle(
		func(s *Set) *[]*messagingv1.Subscription { return &s.Subscriptions }),
}

// Load reads every *.yaml file at the top of fsys (config.FS, or os.DirFS of a directory), splits it
// into documents and decodes each one strictly into its Go API type. Documents that hold only comments
// are skipped. Every problem is reported, joined; each wraps ErrDecode.
func Load(fsys fs.FS) (*Set, error) {
	names, err := manifestFiles(fsys)
	if err != nil {
		return nil, err
	}
	s := &Set{}
	var errs []error
	for _, name := range names {
		if err := s.loadFile(fsys, name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(s.Objects) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%w: no objects in %s", ErrDecode, strings.Join(FileGlobs, ", ")))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// loadFile decodes every document of one file into s.
func (s *Set) loadFile(fsys fs.FS, name string) error {
	data, err := fs.ReadFile(fsys, name)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	docs, err := splitDocuments(data)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDecode, name, err)
	}
	var errs []error
	for i, doc := range docs {
		origin := fmt.Sprintf("%s#%d", name, i+1)
		if err := s.loadDocument(origin, doc); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// loadDocument decodes one document and files it; empty documents are ignored.
func (s *Set) loadDocument(origin string, doc []byte) error {
	if isBlank(doc) {
		return nil
	}
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDecode, origin, err)
	}
	gvk := tm.GroupVersionKind()
	h, ok := kinds[gvk]
	if !ok {
		return fmt.Errorf("%w: %s: unsupported apiVersion %q kind %q", ErrDecode, origin, tm.APIVersion, tm.Kind)
	}
	r, err := h.decode(doc)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrDecode, origin, tm.Kind, err)
	}
	h.add(s, r)
	s.Objects = append(s.Objects, Object{Origin: origin, GVK: gvk, Resource: r})
	return nil
}

// decodeStrict decodes one YAML document into obj the way the API server's strict field validation
// reads it: YAML to JSON without type hints (as kubectl sends it), duplicate keys refused, then
// case-sensitive JSON decoding that refuses unknown and duplicate fields.
func decodeStrict(doc []byte, obj any) error {
	data, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := k8sjson.UnmarshalStrict(data, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// splitDocuments cuts a multi-document YAML stream at its "---" lines.
func splitDocuments(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
}

// isBlank reports whether a document holds nothing but blank lines, comments and separators.
func isBlank(doc []byte) bool {
	for line := range strings.SplitSeq(string(doc), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && t != "---" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

// manifestFiles lists the files FileGlobs select in fsys, sorted.
func manifestFiles(fsys fs.FS) ([]string, error) {
	var names []string
	for _, g := range FileGlobs {
		matched, err := fs.Glob(fsys, g)
		if err != nil {
			return nil, fmt.Errorf("list manifests: %w", err)
		}
		names = append(names, matched...)
	}
	sort.Strings(names)
	return names, nil
}
