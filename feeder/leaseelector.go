package feeder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"go.uber.org/zap"
)

// Kubernetes Lease timing. client-go stores the lease duration in whole seconds, and candidates take
// over leaseDurationMs after they last saw the record change; the holder may publish only until
// leaseRenewDeadlineMs after the start of its last successful renewal, which is earlier.
const (
	leaseDurationMs      = 2000
	leaseRenewDeadlineMs = 1500
	leaseRetryPeriodMs   = 250
	// LeaseNameDefault is the Lease object the feeder replicas compete for.
	LeaseNameDefault = "kawase-feeder"
	// identitySuffixBytes of randomness make every campaign a new holder, so client-go counts every
	// term as a transition and the epoch always rises.
	identitySuffixBytes         = 4
	serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
)

// LeaseTiming overrides the Lease durations (tests); zero fields keep the defaults.
type LeaseTiming struct {
	Duration, RenewDeadline, RetryPeriod time.Duration
}

// LeaseElector elects the leader with a coordination.k8s.io Lease through client-go's leaderelection
// (LeaseLock, ReleaseOnCancel). The epoch is the Lease's leaseTransitions + 1.
type LeaseElector struct {
	client    coordinationv1client.LeasesGetter
	namespace string
	name      string
	podName   string
	timing    LeaseTiming
	log       *zap.Logger
}

// NewLeaseElector returns an elector on the Lease namespace/name; podName names this replica.
func NewLeaseElector(client coordinationv1client.LeasesGetter, namespace, name, podName string, timing LeaseTiming, log *zap.Logger) *LeaseElector {
	if log == nil {
		log = zap.NewNop()
	}
	if timing.Duration == 0 {
		timing = LeaseTiming{Duration: leaseDurationMs * time.Millisecond,
			RenewDeadline: leaseRenewDeadlineMs * time.Millisecond, RetryPeriod: leaseRetryPeriodMs * time.Millisecond}
	}
	return &LeaseElector{client: client, namespace: namespace, name: name, podName: podName, timing: timing,
		log: log.Named("election")}
}

// NewInClusterLeaseElector builds the Lease client from the pod's service account; an empty
// namespace means the pod's own.
func NewInClusterLeaseElector(namespace, name, podName string, log *zap.Logger) (*LeaseElector, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("lease election needs a cluster: %w", err)
	}
	client, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("lease client: %w", err)
	}
	if namespace == "" {
		b, err := os.ReadFile(serviceAccountNamespaceFile)
		if err != nil {
			return nil, fmt.Errorf("lease namespace: %w", err)
		}
		namespace = strings.TrimSpace(string(b))
	}
	return NewLeaseElector(client, namespace, name, podName, LeaseTiming{}, log), nil
}

// Campaign runs a new LeaderElector until it leads.
func (e *LeaseElector) Campaign(ctx context.Context) (*Lease, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	suffix := make([]byte, identitySuffixBytes)
	_, _ = rand.Read(suffix)
	identity := e.podName + "_" + hex.EncodeToString(suffix)
	runCtx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	lease := newLease(func() { cancel(); <-runDone })
	lock := &fencedLock{
		Interface: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: e.namespace, Name: e.name},
			Client:     e.client,
			LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
		},
		lease: lease, validity: e.timing.RenewDeadline,
	}
	started := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: e.name, ReleaseOnCancel: true,
		LeaseDuration: e.timing.Duration, RenewDeadline: e.timing.RenewDeadline, RetryPeriod: e.timing.RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(started) },
			OnStoppedLeading: func() { lease.end(fmt.Errorf("%w: lease renewal failed", ErrLeaseLost)) },
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("lease election: %w", err)
	}
	go func() {
		defer close(runDone)
		le.Run(runCtx)
		lease.end(fmt.Errorf("%w: lease elector stopped", ErrLeaseLost))
	}()
	select {
	case <-started:
		e.log.Info("lease acquired", zap.String("identity", identity), zap.Int64("epoch", lease.Epoch()))
		return lease, nil
	case <-ctx.Done():
		cancel()
		<-runDone
		return nil, ctx.Err()
	}
}

// fencedLock watches client-go's writes of the Lease: each successful write naming this replica as
// holder proves leadership from the moment the request started, and the first one fixes the epoch.
type fencedLock struct {
	resourcelock.Interface
	lease    *Lease
	validity time.Duration
}

// Create creates the Lease record.
func (l *fencedLock) Create(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	start := time.Now()
	if err := l.Interface.Create(ctx, rec); err != nil {
		return err
	}
	l.observe(rec, start)
	return nil
}

// Update acquires, renews or releases the Lease record.
func (l *fencedLock) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	start := time.Now()
	if err := l.Interface.Update(ctx, rec); err != nil {
		return err
	}
	l.observe(rec, start)
	return nil
}

func (l *fencedLock) observe(rec resourcelock.LeaderElectionRecord, start time.Time) {
	if rec.HolderIdentity != l.Identity() {
		return
	}
	l.lease.epoch.CompareAndSwap(0, int64(rec.LeaderTransitions)+1)
	l.lease.prove(start, l.validity)
}

// errNoLeaseClient is returned when lease election is configured without a client.
var errNoLeaseClient = errors.New("lease election: no client")

// check reports a misconfigured elector before it campaigns.
func (e *LeaseElector) check() error {
	if e.client == nil {
		return errNoLeaseClient
	}
	if e.namespace == "" || e.name == "" {
		return errors.New("lease election: namespace and name are required")
	}
	return nil
}
