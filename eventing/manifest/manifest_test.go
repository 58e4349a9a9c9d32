package manifest

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	servingautoscaling "knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/kawase-fx/kawase/config"
	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// Sizing of the rates service (see the comment in config/rates.yaml).
const (
	viewerRequestsPerSecond = 20000
	snapshotRequestLatency  = 10 * time.Millisecond
	ratesRequiredHeadroom   = 2
	streamingViewers        = 20000
)

// The relay's bounded retry schedule: the last gap is about a minute, the whole schedule about 10.5 min.
const (
	relayLastGap    = time.Minute
	relayTotalGaps  = 630 * time.Second
	relayAttemptMax = 10 * time.Second
)

func loadConfig(t *testing.T) *Set {
	t.Helper()
	s, err := Load(config.FS)
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	return s
}

func TestConfigIsValid(t *testing.T) {
	s := loadConfig(t)
	if err := s.Validate(context.Background()); err != nil {
		t.Fatalf("config/ does not validate:\n%v", err)
	}
	counts := map[string][2]int{
		"Services": {len(s.Services), 6}, "KafkaSources": {len(s.KafkaSources), 3},
		"KafkaSinks": {len(s.KafkaSinks), 2}, "KafkaChannels": {len(s.KafkaChannels), 1},
		"Subscriptions": {len(s.Subscriptions), 1}, "Deployments": {len(s.Deployments), 1},
		"PodDisruptionBudgets": {len(s.PodDisruptionBudgets), 1}, "Namespaces": {len(s.Namespaces), 1},
		"ConfigMaps": {len(s.ConfigMaps), 2}, "Secrets": {len(s.Secrets), 4},
		"ServiceAccounts": {len(s.ServiceAccounts), 1}, "Roles": {len(s.Roles), 1}, "RoleBindings": {len(s.RoleBindings), 1},
	}
	for kind, c := range counts {
		if c[0] != c[1] {
			t.Errorf("%s: have %d, want %d", kind, c[0], c[1])
		}
	}
}

func TestValidateLeavesSetUnchanged(t *testing.T) {
	s := loadConfig(t)
	if err := s.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ks := s.KafkaSource("rates-to-ratekeeper"); ks.Spec.Consumers != nil {
		t.Error("Validate defaulted the KafkaSource in the Set instead of a copy")
	}
	if img := s.Service("rates").Spec.Template.Spec.Containers[0].Image; !strings.HasPrefix(img, koPrefix) {
		t.Errorf("Validate rewrote the image in the Set to %q", img)
	}
}

func TestPairsMatchCatalogue(t *testing.T) {
	var want []string
	for _, p := range fx.Pairs() {
		want = append(want, string(p.Pair))
	}
	got := loadConfig(t).ConfigMap("kawase-pairs").Data["pairs"]
	if got != strings.Join(want, ",") {
		t.Errorf("kawase-pairs pairs = %q\nwant fx.Pairs() = %q", got, strings.Join(want, ","))
	}
}

// catalogueTopic returns the catalogue's entry for a topic.
func catalogueTopic(t *testing.T, name string) eventing.Topic {
	t.Helper()
	for _, tp := range eventing.Topics() {
		if tp.Name == name {
			return tp
		}
	}
	t.Fatalf("topic %s is not in eventing.Topics()", name)
	return eventing.Topic{}
}

func TestKafkaSourcesMatchCatalogue(t *testing.T) {
	s := loadConfig(t)
	for _, tc := range []struct {
		source, topic, group, sink, deadLetters string
	}{
		{"rates-to-ratekeeper", eventing.TopicRates, "kawase-ratekeeper", "ratekeeper", "deadletters"},
		{"commands-to-ledger", eventing.TopicCommands, "kawase-ledger", "ledger", "deadletters"},
		{"deadletters-to-store", eventing.TopicDeadLetters, "kawase-deadletters", "deadletters", "deadletters-overflow"},
	} {
		ks := s.KafkaSource(tc.source)
		if ks == nil {
			t.Errorf("KafkaSource %s missing", tc.source)
			continue
		}
		catalogueTopic(t, tc.topic)
		if !slices.Equal(ks.Spec.Topics, []string{tc.topic}) || ks.Spec.ConsumerGroup != tc.group ||
			ks.Spec.Sink.Ref.Name != tc.sink || ks.Spec.Delivery.DeadLetterSink.Ref.Name != tc.deadLetters {
			t.Errorf("KafkaSource %s: topics %v group %s sink %s dead letters %s; want %s %s %s %s", tc.source,
				ks.Spec.Topics, ks.Spec.ConsumerGroup, ks.Spec.Sink.Ref.Name, ks.Spec.Delivery.DeadLetterSink.Ref.Name,
				tc.topic, tc.group, tc.sink, tc.deadLetters)
		}
		if ks.Spec.Ordering == nil || *ks.Spec.Ordering != "ordered" || ks.Spec.InitialOffset != "earliest" {
			t.Errorf("KafkaSource %s: want ordering ordered and initialOffset earliest", tc.source)
		}
	}
}

func TestKafkaSinksMatchCatalogue(t *testing.T) {
	s := loadConfig(t)
	for name, topic := range map[string]string{
		"deadletters": eventing.TopicDeadLetters, "deadletters-overflow": eventing.TopicDeadLettersOverflow,
	} {
		ks := s.KafkaSink(name)
		if ks == nil {
			t.Fatalf("KafkaSink %s missing", name)
		}
		want := catalogueTopic(t, topic)
		if ks.Spec.Topic != topic || ks.Spec.NumPartitions == nil || int(*ks.Spec.NumPartitions) != want.Partitions {
			t.Errorf("KafkaSink %s: topic %s partitions %v, want %s with %d", name, ks.Spec.Topic,
				ks.Spec.NumPartitions, topic, want.Partitions)
		}
		if ks.Spec.ContentMode == nil || *ks.Spec.ContentMode != "binary" {
			t.Errorf("KafkaSink %s: want contentMode binary", name)
		}
	}
}

func TestExecutionsChannelMatchesCatalogue(t *testing.T) {
	ch := loadConfig(t).KafkaChannel("executions")
	topic, err := ChannelTopic(ch)
	if err != nil {
		t.Fatal(err)
	}
	if topic != eventing.TopicExecutions {
		t.Errorf("KafkaChannel executions is backed by %s, the catalogue says %s", topic, eventing.TopicExecutions)
	}
	want := catalogueTopic(t, eventing.TopicExecutions)
	if int(ch.Spec.NumPartitions) != want.Partitions {
		t.Errorf("KafkaChannel executions: %d partitions, catalogue %d", ch.Spec.NumPartitions, want.Partitions)
	}
	retention, err := ch.Spec.ParseRetentionDuration()
	if err != nil || retention != want.Retention {
		t.Errorf("KafkaChannel executions: retention %v (%v), catalogue %v", retention, err, want.Retention)
	}
}

// annotationInt reads an integer autoscaling annotation of a Service's revision template.
func annotationInt(t *testing.T, svc *servingv1.Service, key string) int {
	t.Helper()
	v, err := strconv.Atoi(svc.Spec.Template.Annotations[key])
	if err != nil {
		t.Fatalf("Service %s: annotation %s: %v", svc.Name, key, err)
	}
	return v
}

func TestMaxScaleWithinPartitions(t *testing.T) {
	s := loadConfig(t)
	for svc, topic := range map[string]string{
		"ledger": eventing.TopicCommands, "ratekeeper": eventing.TopicRates, "relay": eventing.TopicExecutions,
	} {
		maxScale := annotationInt(t, s.Service(svc), servingautoscaling.MaxScaleAnnotationKey)
		if partitions := catalogueTopic(t, topic).Partitions; maxScale < 1 || maxScale > partitions {
			t.Errorf("Service %s: max-scale %d, want 1..%d (partitions of %s)", svc, maxScale, partitions, topic)
		}
	}
}

func TestRatesSizedForViewers(t *testing.T) {
	rates := loadConfig(t).Service("rates")
	ann := rates.Spec.Template.Annotations
	if ann[servingautoscaling.MetricAnnotationKey] != "concurrency" {
		t.Fatalf("rates: metric %q, want concurrency", ann[servingautoscaling.MetricAnnotationKey])
	}
	minScale := annotationInt(t, rates, servingautoscaling.MinScaleAnnotationKey)
	maxScale := annotationInt(t, rates, servingautoscaling.MaxScaleAnnotationKey)
	target := annotationInt(t, rates, servingautoscaling.TargetAnnotationKey)
	utilization := annotationInt(t, rates, servingautoscaling.TargetUtilizationPercentageKey)
	perPod := float64(target) * float64(utilization) / 100
	polled := float64(minScale) * perPod / snapshotRequestLatency.Seconds()
	if minScale < 1 || polled < viewerRequestsPerSecond*ratesRequiredHeadroom {
		t.Errorf("rates: min-scale %d x %.0f in flight / %v = %.0f req/s, want >= %d", minScale, perPod,
			snapshotRequestLatency, polled, viewerRequestsPerSecond*ratesRequiredHeadroom)
	}
	if streams := float64(maxScale) * perPod; streams < streamingViewers {
		t.Errorf("rates: max-scale %d x %.0f = %.0f streams, want >= %d", maxScale, perPod, streams, streamingViewers)
	}
}

func TestTradeFunctionsScaleToZero(t *testing.T) {
	s := loadConfig(t)
	for _, name := range []string{"ratekeeper", "trading", "relay", "deadletters"} {
		if got := annotationInt(t, s.Service(name), servingautoscaling.MinScaleAnnotationKey); got != 0 {
			t.Errorf("Service %s: min-scale %d, want 0", name, got)
		}
	}
}

// The ledger's watcher fires limit/stop triggers, expires GTD orders and closes out accounts as
// prices move, and its outbox sweep runs beside it; nothing but a command wakes a Service at zero.
func TestLedgerNeverScalesToZero(t *testing.T) {
	if got := annotationInt(t, loadConfig(t).Service("ledger"), servingautoscaling.MinScaleAnnotationKey); got < 1 {
		t.Errorf("Service ledger: min-scale %d, want at least 1", got)
	}
}

func TestRelayDeliverySchedule(t *testing.T) {
	sub := loadConfig(t).Subscription("executions-to-relay")
	d := sub.Spec.Delivery
	if d.BackoffPolicy == nil || *d.BackoffPolicy != "linear" || d.Retry == nil {
		t.Fatalf("executions-to-relay: want linear backoff with a retry count")
	}
	delay := isoSeconds(t, *d.BackoffDelay)
	var last, total time.Duration
	for k := 1; k <= int(*d.Retry); k++ {
		last = delay * time.Duration(k) // Knative's linear backoff: backoffDelay x k before retry k
		total += last
	}
	if last != relayLastGap || total != relayTotalGaps {
		t.Errorf("executions-to-relay: last gap %v total %v, want %v and %v", last, total, relayLastGap, relayTotalGaps)
	}
	if got := isoSeconds(t, *d.Timeout); got != relayAttemptMax {
		t.Errorf("executions-to-relay: per-attempt timeout %v, want %v", got, relayAttemptMax)
	}
}

// isoSeconds parses the "PT<n>S" durations used in config/.
func isoSeconds(t *testing.T, iso string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(strings.ToLower(strings.TrimPrefix(iso, "PT")))
	if err != nil {
		t.Fatalf("duration %q: %v", iso, err)
	}
	return d
}

func TestFeeder(t *testing.T) {
	s := loadConfig(t)
	d := s.Deployment("feeder")
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("feeder: replicas %v, want >= 2", d.Spec.Replicas)
	}
	pdb := s.PodDisruptionBudgets[0]
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("feeder PodDisruptionBudget: minAvailable %v, want 1", pdb.Spec.MinAvailable)
	}
	aff := d.Spec.Template.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("feeder: want preferred pod anti-affinity")
	}
	env := envOf(d.Spec.Template.Spec.Containers[0])
	if env["KAWASE_LEADER_ELECTION"].Value != "lease" || env["POD_NAME"].ValueFrom == nil {
		t.Error("feeder: want KAWASE_LEADER_ELECTION=lease and POD_NAME from the downward API")
	}
	rules := s.Roles[0].Rules
	if len(rules) != 1 || !slices.Equal(rules[0].APIGroups, []string{"coordination.k8s.io"}) ||
		!slices.Equal(rules[0].Resources, []string{"leases"}) {
		t.Errorf("feeder Role: %+v, want leases in coordination.k8s.io only", rules)
	}
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		out[e.Name] = e
	}
	return out
}

func TestServicesWiring(t *testing.T) {
	s := loadConfig(t)
	common := []string{"KAFKA_BROKERS", "KAWASE_LOG_LEVEL"}
	for _, tc := range []struct {
		name, port string
		env        []string
	}{
		{"rates", "h2c", []string{"KAWASE_PAIRS", "KAWASE_RATEKEEPER_GRPC"}},
		{"ratekeeper", "h2c", []string{"DATABASE_URL", "KAWASE_PAIRS"}},
		{"trading", "", []string{"DATABASE_URL", "KAWASE_ADMIN_TOKEN", "KAWASE_LEDGER_GRPC"}},
		{"ledger", "h2c", []string{"DATABASE_URL", "KAWASE_PAIRS", "KAWASE_RATES_GRPC"}},
		{"relay", "", []string{"KAWASE_EXTERNAL_URL", "KAWASE_RELAY_HMAC_SECRETS"}},
		{"deadletters", "", []string{"DATABASE_URL", "KAWASE_ADMIN_TOKEN"}},
	} {
		c := s.Service(tc.name).Spec.Template.Spec.Containers[0]
		if !slices.Equal(c.Args, []string{"serve", tc.name}) {
			t.Errorf("Service %s: args %v, want [serve %s]", tc.name, c.Args, tc.name)
		}
		if len(c.Ports) != 1 || c.Ports[0].Name != tc.port {
			t.Errorf("Service %s: ports %+v, want one port named %q", tc.name, c.Ports, tc.port)
		}
		env := envOf(c)
		for _, name := range slices.Concat(common, tc.env) {
			if _, ok := env[name]; !ok {
				t.Errorf("Service %s: env %s missing", tc.name, name)
			}
		}
	}
}

// TestEnvKnownToBinary guards against a start-up refusal: kawase refuses any KAWASE_* variable it
// does not know, so every one the manifests set must appear as a string in the module's Go sources.
func TestEnvKnownToBinary(t *testing.T) {
	s := loadConfig(t)
	root, _, err := s.module()
	if err != nil {
		t.Fatal(err)
	}
	known := stringLiterals(t, root)
	for _, p := range s.podSpecs() {
		for _, c := range containers(p.spec) {
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, "KAWASE_") && !known[e.Name] {
					t.Errorf("%s: env %s is not a variable the kawase sources know", p.owner, e.Name)
				}
			}
		}
	}
}

// stringLiterals collects the string literals of every non-test Go file under root.
func stringLiterals(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil // a file being edited elsewhere; its literals do not count
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if v, err := strconv.Unquote(lit.Value); err == nil {
					out[v] = true
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatalf("read Go sources under %s: %v", root, err)
	}
	return out
}

func TestNoRealSecrets(t *testing.T) {
	for _, sec := range loadConfig(t).Secrets {
		if len(sec.Data) > 0 {
			t.Errorf("Secret %s: has data; templates carry placeholders in stringData only", sec.Name)
		}
		for k, v := range sec.StringData {
			if v != "REPLACE_ME" && v != "" {
				t.Errorf("Secret %s: key %s holds %q, want the placeholder REPLACE_ME", sec.Name, k, v)
			}
		}
	}
}

func TestLookup(t *testing.T) {
	s := loadConfig(t)
	o, ok := s.Lookup("eventing.knative.dev/v1alpha1", "KafkaSink", "kawase", "deadletters")
	if !ok || o.Resource != s.KafkaSink("deadletters") || !strings.HasPrefix(o.Origin, "deadletters.yaml#") {
		t.Errorf("Lookup KafkaSink deadletters = %v, %v", o, ok)
	}
	if _, ok := s.Lookup("serving.knative.dev/v1", "Service", "kawase", "nope"); ok {
		t.Error("Lookup found a Service that does not exist")
	}
}
