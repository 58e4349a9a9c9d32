package manifest

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingautoscaling "knative.dev/serving/pkg/apis/autoscaling"

	"github.com/kawase-fx/kawase/config"
)

// container returns the first container of a Service's revision template.
func container(s *Set, service string) *corev1.Container {
	return &s.Service(service).Spec.Template.Spec.Containers[0]
}

// feederContainer returns the feeder Deployment's container.
func feederContainer(s *Set) *corev1.Container {
	return &s.Deployment("feeder").Spec.Template.Spec.Containers[0]
}

func TestValidateRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(s *Set)
		ctx     func(context.Context) context.Context
		want    []error
		mention string
	}{
		{name: "sink points at a missing Service",
			mutate:  func(s *Set) { s.KafkaSource("commands-to-ledger").Spec.Sink.Ref.Name = "ledgr" },
			want:    []error{ErrReference},
			mention: "commands-to-ledger: spec.sink: dangling reference: Service kawase/ledgr"},
		{name: "sink is a URI",
			mutate: func(s *Set) {
				sink := &s.KafkaSource("rates-to-ratekeeper").Spec.Sink
				sink.Ref, sink.URI = nil, apis.HTTP("ratekeeper.example")
			},
			want: []error{ErrReference}, mention: "is not a reference"},
		{name: "subscriber missing",
			mutate:  func(s *Set) { s.Subscription("executions-to-relay").Spec.Subscriber.Ref.Name = "relay-v2" },
			want:    []error{ErrReference},
			mention: "spec.subscriber: dangling reference: Service kawase/relay-v2"},
		{name: "channel missing",
			mutate:  func(s *Set) { s.Subscription("executions-to-relay").Spec.Channel.Name = "trades" },
			want:    []error{ErrReference},
			mention: "spec.channel: dangling reference: KafkaChannel kawase/trades"},
		{name: "dead-letter sink missing on the Subscription",
			mutate:  func(s *Set) { s.Subscription("executions-to-relay").Spec.Delivery.DeadLetterSink = nil },
			want:    []error{ErrDeadLetter},
			mention: "executions-to-relay: no durable dead-letter sink"},
		{name: "KafkaSource without delivery",
			mutate:  func(s *Set) { s.KafkaSource("rates-to-ratekeeper").Spec.Delivery = nil },
			want:    []error{ErrDeadLetter, ErrDelivery},
			mention: "spec.delivery is not set"},
		{name: "dead-letter sink is not a KafkaSink",
			mutate: func(s *Set) {
				s.KafkaSource("commands-to-ledger").Spec.Delivery.DeadLetterSink.Ref = &duckv1.KReference{
					APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: "deadletters"}
			},
			want: []error{ErrDeadLetter}, mention: "is a Service (serving.knative.dev/v1), not a KafkaSink"},
		{name: "dead-letter sink loops into the consumed topic",
			mutate: func(s *Set) {
				s.KafkaSource("deadletters-to-store").Spec.Delivery.DeadLetterSink.Ref.Name = "deadletters"
			},
			want:    []error{ErrDeadLetter},
			mention: "writes to kawase.deadletters, a topic this object consumes"},
		{name: "dead-letter sink dangling",
			mutate:  func(s *Set) { s.KafkaSource("commands-to-ledger").Spec.Delivery.DeadLetterSink.Ref.Name = "dlq" },
			want:    []error{ErrReference},
			mention: "spec.delivery.deadLetterSink: dangling reference: KafkaSink kawase/dlq"},
		{name: "delivery without per-attempt timeout",
			mutate:  func(s *Set) { s.KafkaSource("commands-to-ledger").Spec.Delivery.Timeout = nil },
			want:    []error{ErrDelivery},
			mention: "spec.delivery does not set timeout"},
		{name: "min-scale above max-scale",
			mutate: func(s *Set) {
				s.Service("rates").Spec.Template.Annotations[servingautoscaling.MinScaleAnnotationKey] = "80"
			},
			want: []error{ErrKnative}, mention: "max-scale=60 is less than min-scale=80"},
		{name: "bad backoffDelay on the Subscription",
			mutate:  func(s *Set) { s.Subscription("executions-to-relay").Spec.Delivery.BackoffDelay = ptr.To("3s") },
			want:    []error{ErrKnative},
			mention: "invalid value: 3s: spec.delivery.backoffDelay"},
		{name: "bad backoffDelay on a KafkaSource (the Kafka webhook skips delivery, Validate does not)",
			mutate:  func(s *Set) { s.KafkaSource("rates-to-ratekeeper").Spec.Delivery.BackoffDelay = ptr.To("soon") },
			want:    []error{ErrKnative},
			mention: "invalid value: soon: spec.delivery.backoffDelay"},
		{name: "unknown ordering",
			mutate: func(s *Set) {
				s.KafkaSource("commands-to-ledger").Spec.Ordering = ptr.To[kafkaOrdering]("fifo")
			},
			want: []error{ErrKnative}, mention: "invalid value: fifo: spec.ordering"},
		{name: "bad channel retention",
			mutate:  func(s *Set) { s.KafkaChannel("executions").Spec.RetentionDuration = "a week" },
			want:    []error{ErrKnative},
			mention: "spec.retentionDuration"},
		{name: "bad KafkaSink content mode",
			mutate:  func(s *Set) { s.KafkaSink("deadletters").Spec.ContentMode = ptr.To("json") },
			want:    []error{ErrKnative},
			mention: "invalid value: json: spec.contentMode"},
		{name: "port name Knative refuses",
			mutate:  func(s *Set) { container(s, "rates").Ports[0].Name = "grpc" },
			want:    []error{ErrKnative},
			mention: "Port name grpc is not allowed"},
		{name: "delivery timeout disabled in config-features",
			ctx: func(ctx context.Context) context.Context {
				flags, _ := feature.NewFlagsConfigFromMap(map[string]string{feature.DeliveryTimeout: "disabled"})
				return feature.ToContext(ctx, flags)
			},
			want: []error{ErrKnative}, mention: "must not set the field(s): spec.delivery.timeout"},
		{name: "memory limit raised without KAWASE_MEMORY_LIMIT",
			mutate: func(s *Set) {
				container(s, "rates").Resources.Limits[corev1.ResourceMemory] = resource.MustParse("1Gi")
			},
			want:    []error{ErrMemoryLimit},
			mention: `container "rates": KAWASE_MEMORY_LIMIT does not match the memory limit: KAWASE_MEMORY_LIMIT is "536870912", want 1073741824 (limits.memory 1Gi)`},
		{name: "memory limit without KAWASE_MEMORY_LIMIT",
			mutate: func(s *Set) {
				c := container(s, "ledger")
				c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "KAWASE_MEMORY_LIMIT" })
			},
			want:    []error{ErrMemoryLimit},
			mention: `container "ledger": KAWASE_MEMORY_LIMIT does not match the memory limit: KAWASE_MEMORY_LIMIT is unset, want 536870912 (limits.memory 512Mi)`},
		{name: "KAWASE_MEMORY_LIMIT left behind a removed memory limit",
			mutate:  func(s *Set) { delete(container(s, "relay").Resources.Limits, corev1.ResourceMemory) },
			want:    []error{ErrMemoryLimit},
			mention: `container "relay": KAWASE_MEMORY_LIMIT does not match the memory limit: KAWASE_MEMORY_LIMIT is set but the container has no memory limit`},
		{name: "container runs as root",
			mutate: func(s *Set) {
				sc := container(s, "ledger").SecurityContext
				sc.RunAsNonRoot, sc.RunAsUser = ptr.To(false), ptr.To[int64](0)
			},
			want:    []error{ErrPodSecurity},
			mention: `Service kawase/ledger: container "ledger": violates the restricted pod security standard: securityContext.runAsNonRoot must be true; securityContext.runAsUser must not be 0`},
		{name: "container without securityContext",
			mutate:  func(s *Set) { container(s, "trading").SecurityContext = nil },
			want:    []error{ErrPodSecurity, ErrKnativeWarning},
			mention: "Kubernetes default value is insecure"},
		{name: "capabilities dropped as lowercase all",
			mutate:  func(s *Set) { container(s, "relay").SecurityContext.Capabilities.Drop = []corev1.Capability{"all"} },
			want:    []error{ErrPodSecurity, ErrKnativeWarning},
			mention: "Must be spelled as 'ALL'"},
		{name: "feeder may escalate privileges",
			mutate:  func(s *Set) { feederContainer(s).SecurityContext.AllowPrivilegeEscalation = nil },
			want:    []error{ErrPodSecurity},
			mention: "allowPrivilegeEscalation must be false"},
		{name: "feeder without seccomp",
			mutate: func(s *Set) {
				feederContainer(s).SecurityContext.SeccompProfile = nil
				s.Deployment("feeder").Spec.Template.Spec.SecurityContext.SeccompProfile.Type = corev1.SeccompProfileTypeUnconfined
			},
			want: []error{ErrPodSecurity}, mention: "seccompProfile.type must be RuntimeDefault"},
		{name: "ko path to a package that is not main",
			mutate:  func(s *Set) { container(s, "relay").Image = "ko://github.com/kawase-fx/kawase/eventing/fx" },
			want:    []error{ErrImage},
			mention: "package fx in"},
		{name: "ko path to a missing directory",
			mutate:  func(s *Set) { feederContainer(s).Image = "ko://github.com/kawase-fx/kawase/cmd/nope" },
			want:    []error{ErrImage},
			mention: "no buildable Go package"},
		{name: "image that is not ko://",
			mutate:  func(s *Set) { container(s, "trading").Image = "nginx:1.27" },
			want:    []error{ErrImage},
			mention: `"nginx:1.27" is not a ko:// reference`},
		{name: "ko path outside the module",
			mutate:  func(s *Set) { container(s, "trading").Image = "ko://github.com/kawase-fx/kawasex/cmd/kawase" },
			want:    []error{ErrImage},
			mention: "is outside module github.com/kawase-fx/kawase"},
		{name: "env reads a missing ConfigMap key",
			mutate: func(s *Set) {
				container(s, "trading").Env[1].ValueFrom.ConfigMapKeyRef.Key = "kafka.bootstrap"
			},
			want: []error{ErrReference}, mention: `ConfigMap kawase-settings has no key "kafka.bootstrap"`},
		{name: "env reads a missing Secret",
			mutate:  func(s *Set) { feederContainer(s).Env[4].ValueFrom.SecretKeyRef.Name = "db" },
			want:    []error{ErrReference},
			mention: "env DATABASE_URL: dangling reference: Secret db is not in the manifests"},
		{name: "RoleBinding to a missing Role",
			mutate:  func(s *Set) { s.RoleBindings[0].RoleRef.Name = "leader" },
			want:    []error{ErrReference},
			mention: "roleRef: dangling reference: Role kawase/leader"},
		{name: "PodDisruptionBudget selects nothing",
			mutate: func(s *Set) {
				s.PodDisruptionBudgets[0].Spec.Selector.MatchLabels["app.kubernetes.io/name"] = "fedder"
			},
			want: []error{ErrReference}, mention: "selects no Deployment's pods"},
		{name: "Deployment with a missing ServiceAccount",
			mutate:  func(s *Set) { s.Deployment("feeder").Spec.Template.Spec.ServiceAccountName = "fedder" },
			want:    []error{ErrReference},
			mention: "serviceAccountName: dangling reference: ServiceAccount kawase/fedder"},
		{name: "object in another namespace",
			mutate:  func(s *Set) { s.KafkaSink("deadletters-overflow").Namespace = "default" },
			want:    []error{ErrNamespace},
			mention: `KafkaSink default/deadletters-overflow: bad namespace or name: namespace "default", want "kawase"`},
		{name: "duplicate object",
			mutate: func(s *Set) {
				dup := s.Service("relay").DeepCopy()
				s.Services = append(s.Services, dup)
				s.Objects = append(s.Objects, Object{Origin: "extra.yaml#1", GVK: dup.GroupVersionKind(), Resource: dup})
			},
			want: []error{ErrNamespace}, mention: "same kind and name as relay.yaml#3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := loadConfig(t)
			if tc.mutate != nil {
				tc.mutate(s)
			}
			ctx := context.Background()
			if tc.ctx != nil {
				ctx = tc.ctx(ctx)
			}
			err := s.Validate(ctx)
			if err == nil {
				t.Fatal("Validate accepted the broken manifests")
			}
			t.Log(err)
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Errorf("error does not wrap %q:\n%v", want, err)
				}
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error does not mention %q:\n%v", tc.mention, err)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	for _, tc := range []struct {
		name, file, old, new, mention string
	}{
		{name: "unknown field", file: "ratekeeper.yaml", old: "  ordering: ordered\n",
			new:     "  ordering: ordered\n  orderring: ordered\n",
			mention: `ratekeeper.yaml#2 KafkaSource: unknown field "spec.orderring"`},
		{name: "field in the wrong case", file: "deadletters.yaml", old: "contentMode: binary",
			new: "contentmode: binary", mention: `unknown field "spec.contentmode"`},
		{name: "unknown field in a container", file: "rates.yaml", old: "          readinessProbe:",
			new: "          readynessProbe:", mention: `rates.yaml#1 Service: unknown field "spec.template.spec.containers[0].readynessProbe"`},
		{name: "duplicate key", file: "trading.yaml", old: "  name: trading\n",
			new: "  name: trading\n  name: trading2\n", mention: `trading.yaml#1 Service`},
		{name: "number where a string belongs", file: "settings.yaml", old: "log.level: info",
			new: "log.level: 3", mention: `settings.yaml#2 ConfigMap`},
		{name: "unknown kind", file: "relay.yaml", old: "kind: KafkaChannel", new: "kind: KafkaTopic",
			mention: `relay.yaml#1: unsupported apiVersion "messaging.knative.dev/v1beta1" kind "KafkaTopic"`},
		{name: "wrong version", file: "ledger.yaml", old: "sources.knative.dev/v1beta1", new: "sources.knative.dev/v1alpha1",
			mention: `ledger.yaml#2: unsupported apiVersion "sources.knative.dev/v1alpha1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := editedConfig(t, tc.file, tc.old, tc.new)
			_, err := Load(fsys)
			t.Log(err)
			if !errors.Is(err, ErrDecode) {
				t.Fatalf("Load error %v, want ErrDecode", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error does not mention %q:\n%v", tc.mention, err)
			}
		})
	}
}

// editedConfig copies config.FS with one replacement in one file.
func editedConfig(t *testing.T, file, old, new string) fs.FS {
	t.Helper()
	out := fstest.MapFS{}
	names, err := manifestFiles(config.FS)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		data, err := fs.ReadFile(config.FS, name)
		if err != nil {
			t.Fatal(err)
		}
		if name == file {
			if !strings.Contains(string(data), old) {
				t.Fatalf("%s does not contain %q", file, old)
			}
			data = []byte(strings.Replace(string(data), old, new, 1))
		}
		out[name] = &fstest.MapFile{Data: data}
	}
	return out
}

func TestLoadSkipsCommentOnlyDocuments(t *testing.T) {
	s, err := Load(fstest.MapFS{"a.yaml": {Data: []byte("# nothing\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\n")}})
	if err != nil || len(s.Objects) != 1 || s.Objects[0].Origin != "a.yaml#2" {
		t.Fatalf("Load = %+v, %v; want one Namespace from a.yaml#2", s, err)
	}
}

func TestLoadRejectsEmpty(t *testing.T) {
	if _, err := Load(fstest.MapFS{}); !errors.Is(err, ErrDecode) {
		t.Fatalf("Load of nothing: %v, want ErrDecode", err)
	}
}

type kafkaOrdering = kafkasourcesv1beta1.DeliveryOrdering
