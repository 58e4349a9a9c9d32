package feeder

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Elector wins leadership terms for one replica. Two implementations exist: a PostgreSQL advisory
// lock on a dedicated connection (PGElector, off-cluster) and a Kubernetes Lease (LeaseElector).
type Elector interface {
	// Campaign blocks until this replica leads, and returns the term's lease; it returns an error only
	// when ctx ends or the elector cannot work at all.
	Campaign(ctx context.Context) (*Lease, error)
}

// ErrLeaseLost is the cause of a lease that ended without its holder resigning.
var ErrLeaseLost = errors.New("leadership lost")

// errResigned is the cause of a lease its holder gave up.
var errResigned = errors.New("leadership resigned")

// clockBase anchors monotonic deadlines: the monotonic clock keeps running while a process is
// stopped, so a process woken after SIGSTOP sees its deadline passed.
var clockBase = time.Now()

// Lease is one leadership term: its fencing epoch, and the deadline until which its holder may act as
// leader. The elector pushes the deadline forward each time it proves it still holds leadership; every
// publish is gated on Held, so a holder that cannot prove leadership any more — lock connection dead,
// lease renewal failing, process frozen — stops publishing before anything else, at the latest when
// the deadline passes, and always before another replica can win.
//
// A deadline is kept on two clocks and both must hold: the monotonic clock (immune to wall-clock
// steps) and the wall clock (which, unlike the monotonic one, catches up after a whole VM was paused).
type Lease struct {
	epoch        atomic.Int64
	monoDeadline atomic.Int64 // ns since clockBase on the monotonic clock
	wallDeadline atomic.Int64 // Unix ns
	lost         atomic.Bool
	done         chan struct{}
	once         sync.Once
	cause        error
	resign       func()
}

func newLease(resign func()) *Lease {
	return &Lease{done: make(chan struct{}), resign: resign}
}

// Epoch is the term's fencing token, greater than that of every earlier term.
func (l *Lease) Epoch() int64 { return l.epoch.Load() }

// Held reports whether the term is live and its deadline has not passed. It reads the clock, so call
// it immediately before acting.
func (l *Lease) Held() bool {
	if l.lost.Load() || l.epoch.Load() == 0 {
		return false
	}
	now := time.Now()
	return int64(now.Sub(clockBase)) < l.monoDeadline.Load() && now.UnixNano() < l.wallDeadline.Load()
}

// Done is closed when the term ends.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Err says why the term ended: ErrLeaseLost (wrapped) or nil while it lasts.
func (l *Lease) Err() error {
	select {
	case <-l.done:
		return l.cause
	default:
		return nil
	}
}

// Resign gives leadership up: the lease stops being held at once, then the elector releases the lock
// or Lease so another replica can win without waiting for expiry.
func (l *Lease) Resign() {
	l.end(errResigned)
	if l.resign != nil {
		l.resign()
	}
}

// prove extends the deadline to start+validity, where start is when the proof began (before the
// request left), never shortening it.
func (l *Lease) prove(start time.Time, validity time.Duration) {
	raise(&l.monoDeadline, int64(start.Sub(clockBase)+validity))
	raise(&l.wallDeadline, start.UnixNano()+int64(validity))
}

func raise(v *atomic.Int64, to int64) {
	for {
		cur := v.Load()
		if to <= cur || v.CompareAndSwap(cur, to) {
			return
		}
	}
}

// end closes the term; the first cause wins. The lost flag is raised before anything else.
func (l *Lease) end(cause error) {
	l.lost.Store(true)
	l.once.Do(func() {
		l.cause = cause
		close(l.done)
	})
}
