package feeder

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	fakecoordination "k8s.io/client-go/kubernetes/typed/coordination/v1/fake"
	k8stesting "k8s.io/client-go/testing"
)

// electionWait bounds every wait of the election tests.
const electionWait = 10 * time.Second

func campaignAsync(ctx context.Context, e Elector) <-chan *Lease {
	out := make(chan *Lease, 1)
	go func() {
		l, _ := e.Campaign(ctx)
		out <- l
	}()
	return out
}

func mustWin(t *testing.T, c <-chan *Lease, who string) *Lease {
	t.Helper()
	select {
	case l := <-c:
		if l == nil || !l.Held() {
			t.Fatalf("%s: campaign ended without a held lease", who)
		}
		return l
	case <-time.After(electionWait):
		t.Fatalf("%s did not win within %s", who, electionWait)
	}
	return nil
}

func mustNotWin(t *testing.T, c <-chan *Lease, who string, d time.Duration) {
	t.Helper()
	select {
	case <-c:
		t.Fatalf("%s won while another replica held leadership", who)
	case <-time.After(d):
	}
}

func TestLeaseHeldUntilDeadline(t *testing.T) {
	l := newLease(nil)
	if l.Held() {
		t.Fatal("a lease without epoch and proof is held")
	}
	l.epoch.Store(7)
	l.prove(time.Now(), 50*time.Millisecond)
	l.prove(time.Now().Add(-time.Second), time.Millisecond) // an older proof never shortens it
	if !l.Held() {
		t.Fatal("freshly proven lease not held")
	}
	time.Sleep(60 * time.Millisecond)
	if l.Held() {
		t.Fatal("lease held past its deadline without a new proof (a woken frozen process would publish)")
	}
	l.prove(time.Now(), time.Hour)
	if !l.Held() {
		t.Fatal("lease not held after a new proof")
	}
	l.wallDeadline.Store(time.Now().UnixNano()) // as a VM resumed after a pause sees it
	if l.Held() {
		t.Fatal("lease held past its wall-clock deadline")
	}
	l.end(ErrLeaseLost)
	if l.Held() || !errors.Is(l.Err(), ErrLeaseLost) {
		t.Fatal("ended lease still held")
	}
}

// TestPGElectorEpochsAndHandover: one holder at a time, every term a higher epoch, a resign hands
// over at once, and a holder whose lock session dies loses its lease.
func TestPGElectorEpochsAndHandover(t *testing.T) {
	url := migratedDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*electionWait)
	defer cancel()
	a, b := NewPGElector(url, "a", nil), NewPGElector(url, "b", nil)
	la := mustWin(t, campaignAsync(ctx, a), "a")
	bc := campaignAsync(ctx, b)
	mustNotWin(t, bc, "b", 3*pgProofIntervalMs*time.Millisecond)
	la.Resign()
	if la.Held() {
		t.Fatal("resigned lease still held")
	}
	lb := mustWin(t, bc, "b")
	if lb.Epoch() <= la.Epoch() {
		t.Fatalf("epoch went from %d to %d", la.Epoch(), lb.Epoch())
	}
	terminateSessions(t, url, "kawase-feeder/b")
	select {
	case <-lb.Done():
	case <-time.After(electionWait):
		t.Fatal("b kept its lease after its lock session died")
	}
	if lb.Held() || !errors.Is(lb.Err(), ErrLeaseLost) {
		t.Fatalf("b: held %v, err %v", lb.Held(), lb.Err())
	}
	la2 := mustWin(t, campaignAsync(ctx, a), "a again")
	if la2.Epoch() <= lb.Epoch() {
		t.Fatalf("epoch went from %d to %d", lb.Epoch(), la2.Epoch())
	}
	la2.Resign()
}

// TestPGElectorFrozenHolderExpires: a holder that takes the lock and then never speaks again (a
// frozen process) loses it to the server's idle_session_timeout, after its own validity ended.
func TestPGElectorFrozenHolderExpires(t *testing.T) {
	url := migratedDB(t)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["idle_session_timeout"] = strconv.Itoa(pgIdleSessionTimeoutMs)
	ctx, cancel := context.WithTimeout(context.Background(), 2*electionWait)
	defer cancel()
	frozen, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close(context.Background())
	var won bool
	if err := frozen.QueryRow(ctx, tryLockSQL, advisoryLockKey).Scan(&won); err != nil || !won {
		t.Fatalf("frozen holder: won %v, err %v", won, err)
	}
	lockedAt := time.Now()
	l := mustWin(t, campaignAsync(ctx, NewPGElector(url, "a", nil)), "a")
	took := time.Since(lockedAt)
	if took < pgProofValidityMs*time.Millisecond {
		t.Fatalf("won %s after the frozen holder's last query, before its validity (%d ms) ended", took, pgProofValidityMs)
	}
	t.Logf("frozen holder's lock freed after %s", took)
	l.Resign()
}

func terminateSessions(t *testing.T, url, app string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), electionWait)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n)
	if err != nil || n != 1 {
		t.Fatalf("terminate %s: %d sessions, %v", app, n, err)
	}
}

// fakeLeases is a coordination/v1 client backed by an in-memory object tracker; failUpdatesOf makes
// every Lease update by a holder with that identity prefix fail (a partitioned leader).
func fakeLeases(failUpdatesOf *atomic.Value) *fakecoordination.FakeCoordinationV1 {
	scheme := runtime.NewScheme()
	if err := coordinationv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	tracker := k8stesting.NewObjectTracker(scheme, serializer.NewCodecFactory(scheme).UniversalDecoder())
	f := &fakecoordination.FakeCoordinationV1{Fake: &k8stesting.Fake{}}
	f.AddReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		prefix, _ := failUpdatesOf.Load().(string)
		lease := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if prefix != "" && lease.Spec.HolderIdentity != nil && strings.HasPrefix(*lease.Spec.HolderIdentity, prefix) {
			return true, nil, errors.New("api server unreachable")
		}
		return false, nil, nil
	})
	f.AddReactor("*", "*", k8stesting.ObjectReaction(tracker))
	return f
}

// TestLeaseElectorEpochsAndFencing: the Lease elector hands over on resign with a higher epoch, and a
// leader that cannot renew stops being held before another replica can take over.
func TestLeaseElectorEpochsAndFencing(t *testing.T) {
	var failUpdatesOf atomic.Value
	client := fakeLeases(&failUpdatesOf)
	timing := LeaseTiming{Duration: time.Second, RenewDeadline: 600 * time.Millisecond, RetryPeriod: 100 * time.Millisecond}
	a := NewLeaseElector(client, "kawase", LeaseNameDefault, "a", timing, nil)
	b := NewLeaseElector(client, "kawase", LeaseNameDefault, "b", timing, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*electionWait)
	defer cancel()

	la := mustWin(t, campaignAsync(ctx, a), "a")
	bc := campaignAsync(ctx, b)
	var lb *Lease
	select {
	case lb = <-bc:
		// Only legitimate if a lost its lease first: on a starved machine a's renewals can miss the
		// deadline (1 s lease), and then b must take over. Two holders at once is the failure.
		if lb == nil || la.Held() {
			t.Fatal("b won while a still held its lease")
		}
		t.Log("a's renewals were starved past its lease; b took over as it must")
	case <-time.After(2 * timing.Duration):
		la.Resign()
		lb = mustWin(t, bc, "b")
	}
	if la.Epoch() < 1 || lb.Epoch() <= la.Epoch() {
		t.Fatalf("epochs %d then %d", la.Epoch(), lb.Epoch())
	}

	failUpdatesOf.Store("b_")
	ac := campaignAsync(ctx, a)
	var unheldAt time.Time
	waitFor(t, electionWait, "b's lease to stop being held", func() bool { return !lb.Held() })
	unheldAt = time.Now()
	la2 := mustWin(t, ac, "a again")
	wonAt := time.Now()
	if la2.Epoch() <= lb.Epoch() {
		t.Fatalf("epoch went from %d to %d", lb.Epoch(), la2.Epoch())
	}
	if !wonAt.After(unheldAt) {
		t.Fatal("a won before b stopped being held")
	}
	t.Logf("epochs %d → %d → %d; b fenced %s before a won", la.Epoch(), lb.Epoch(), la2.Epoch(), wonAt.Sub(unheldAt))
	la2.Resign()
	lb.Resign()
}
