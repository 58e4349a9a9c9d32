package manifest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// podSpecOf is one pod template of the Set and the object that holds it.
type podSpecOf struct {
	owner Object
	spec  *corev1.PodSpec
}

// podSpec returns the pod template of a Knative Service or Deployment, or nil for other kinds.
func podSpec(r Resource) *corev1.PodSpec {
	switch o := r.(type) {
	case *servingv1.Service:
		return &o.Spec.Template.Spec.PodSpec
	case *appsv1.Deployment:
		return &o.Spec.Template.Spec
	}
	return nil
}

// podSpecs lists the pod templates of every Knative Service and Deployment.
func (s *Set) podSpecs() []podSpecOf {
	var out []podSpecOf
	for _, o := range s.Objects {
		if spec := podSpec(o.Resource); spec != nil {
			out = append(out, podSpecOf{owner: o, spec: spec})
		}
	}
	return out
}

// containers lists a pod's init containers and containers.
func containers(ps *corev1.PodSpec) []corev1.Container {
	return slices.Concat(ps.InitContainers, ps.Containers)
}

// checkNamespaces requires one namespace for everything, declared in the Set, and unique names.
func (s *Set) checkNamespaces() []error {
	if len(s.Namespaces) != 1 {
		return []error{fmt.Errorf("%w: want exactly 1 Namespace object, have %d", ErrNamespace, len(s.Namespaces))}
	}
	ns := s.Namespaces[0].Name
	seen := map[string]Object{}
	var errs []error
	for _, o := range s.Objects {
		if o.GVK.Kind != "Namespace" && o.Resource.GetNamespace() != ns {
			errs = append(errs, fmt.Errorf("%s: %w: namespace %q, want %q",
				o, ErrNamespace, o.Resource.GetNamespace(), ns))
		}
		key := o.GVK.String() + " " + o.Resource.GetNamespace() + "/" + o.Resource.GetName()
		if first, dup := seen[key]; dup {
			errs = append(errs, fmt.Errorf("%s: %w: same kind and name as %s", o, ErrNamespace, first.Origin))
		}
		seen[key] = o
	}
	return errs
}

// checkPodSecurity applies the restricted Pod Security Standard to every pod template.
func (s *Set) checkPodSecurity() []error {
	var errs []error
	for _, p := range s.podSpecs() {
		if problems := podProblems(p.spec); len(problems) > 0 {
			errs = append(errs, fmt.Errorf("%s: %w: %s", p.owner, ErrPodSecurity, joinProblems(problems)))
		}
		for _, c := range containers(p.spec) {
			if problems := containerProblems(p.spec.SecurityContext, c); len(problems) > 0 {
				errs = append(errs, fmt.Errorf("%s: container %q: %w: %s",
					p.owner, c.Name, ErrPodSecurity, joinProblems(problems)))
			}
		}
	}
	return errs
}

// memoryLimitEnv is the variable through which a kawase container learns its memory limit in bytes.
const memoryLimitEnv = "KAWASE_MEMORY_LIMIT"

// checkMemoryLimits requires every container with a memory limit to pass that limit, in bytes, in
// memoryLimitEnv (as a literal, or from the downward API where the kind allows it), so the process
// keeps its heap under it instead of being killed for crossing it; and a container without a limit
// not to pass a stale one.
func (s *Set) checkMemoryLimits() []error {
	var errs []error
	for _, p := range s.podSpecs() {
		for _, c := range containers(p.spec) {
			if problem := memoryLimitProblem(c); problem != "" {
				errs = append(errs, fmt.Errorf("%s: container %q: %w: %s", p.owner, c.Name, ErrMemoryLimit, problem))
			}
		}
	}
	return errs
}

// memoryLimitProblem says what is wrong with a container's memoryLimitEnv, or "".
func memoryLimitProblem(c corev1.Container) string {
	var env *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == memoryLimitEnv {
			env = &c.Env[i]
		}
	}
	limit, limited := c.Resources.Limits[corev1.ResourceMemory]
	switch {
	case !limited && env == nil:
		return ""
	case !limited:
		return memoryLimitEnv + " is set but the container has no memory limit"
	case env == nil:
		return fmt.Sprintf("%s is unset, want %d (limits.memory %s)", memoryLimitEnv, limit.Value(), limit.String())
	case env.ValueFrom != nil:
		if ref := env.ValueFrom.ResourceFieldRef; ref != nil && ref.Resource == "limits.memory" &&
			(ref.ContainerName == "" || ref.ContainerName == c.Name) && (ref.Divisor.IsZero() || ref.Divisor.Value() == 1) {
			return ""
		}
		return memoryLimitEnv + " must come from this container's limits.memory in bytes"
	case env.Value != strconv.FormatInt(limit.Value(), 10):
		return fmt.Sprintf("%s is %q, want %d (limits.memory %s)", memoryLimitEnv, env.Value, limit.Value(), limit.String())
	}
	return ""
}

// podProblems lists the pod-level settings the restricted profile forbids.
func podProblems(ps *corev1.PodSpec) []string {
	var problems []string
	if ps.HostNetwork || ps.HostPID || ps.HostIPC {
		problems = append(problems, "host namespaces (hostNetwork, hostPID, hostIPC) must not be shared")
	}
	for _, v := range ps.Volumes {
		if v.HostPath != nil {
			problems = append(problems, fmt.Sprintf("volume %q must not be a hostPath", v.Name))
		}
	}
	return problems
}

// containerProblems lists what keeps one container from the restricted profile, given its pod's
// security context (container settings win over pod settings).
func containerProblems(psc *corev1.PodSecurityContext, c corev1.Container) []string {
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	var problems []string
	if !isTrue(firstSet(sc.RunAsNonRoot, psc.RunAsNonRoot)) {
		problems = append(problems, "securityContext.runAsNonRoot must be true")
	}
	if uid := firstSet(sc.RunAsUser, psc.RunAsUser); uid != nil && *uid == 0 {
		problems = append(problems, "securityContext.runAsUser must not be 0 (root)")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		problems = append(problems, "securityContext.allowPrivilegeEscalation must be false")
	}
	if isTrue(sc.Privileged) {
		problems = append(problems, "securityContext.privileged must not be true")
	}
	problems = append(problems, capabilityProblems(sc.Capabilities)...)
	problems = append(problems, seccompProblems(sc.SeccompProfile, psc.SeccompProfile)...)
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			problems = append(problems, fmt.Sprintf("port %d must not use a hostPort", p.ContainerPort))
		}
	}
	return problems
}

// capabilityProblems requires drop ALL and allows adding NET_BIND_SERVICE only.
func capabilityProblems(caps *corev1.Capabilities) []string {
	if caps == nil || !slices.Contains(caps.Drop, "ALL") {
		return []string{`securityContext.capabilities.drop must contain "ALL"`}
	}
	var problems []string
	for _, c := range caps.Add {
		if c != "NET_BIND_SERVICE" {
			problems = append(problems, fmt.Sprintf("securityContext.capabilities.add must not add %s", c))
		}
	}
	return problems
}

// seccompProblems requires a RuntimeDefault or Localhost seccomp profile, set on the container or pod.
func seccompProblems(container, pod *corev1.SeccompProfile) []string {
	p := container
	if p == nil {
		p = pod
	}
	if p == nil || (p.Type != corev1.SeccompProfileTypeRuntimeDefault && p.Type != corev1.SeccompProfileTypeLocalhost) {
		return []string{"securityContext.seccompProfile.type must be RuntimeDefault (or Localhost)"}
	}
	return nil
}

// firstSet returns a if it is set, else b.
func firstSet[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

func isTrue(b *bool) bool { return b != nil && *b }

// joinProblems lists problems on one line.
func joinProblems(problems []string) string { return strings.Join(problems, "; ") }
