package relay

import (
	"sync"
	"time"
)

// Circuit breaker bounds. After breakerFailuresMax consecutive failures the external system is known
// to be closed: every delivery is answered 503 at once, without a call, for a cooldown that starts at
// breakerCooldownMs and doubles with every failed probe up to breakerCooldownMaxMs. When the cooldown
// has passed, exactly one delivery goes through as the probe (half-open); its success closes the
// breaker, its failure opens it again. The maximum is short next to the Subscription's retry gaps
// (3 s to 60 s), so the relay never adds much to the time it takes to notice the system is back.
const (
	breakerFailuresMax   = 3
	breakerCooldownMs    = 500
	breakerCooldownMaxMs = 5_000
)

// Breaker states, as the kawase_relay_breaker_state gauge reports them.
const (
	breakerClosed   = 0
	breakerOpen     = 1
	breakerHalfOpen = 2
)

// breaker is the relay's circuit breaker over the external system.
type breaker struct {
	failuresMax              int
	cooldownMin, cooldownMax time.Duration
	onChange                 func(state int)

	mu       sync.Mutex
	state    int
	failures int
	cooldown time.Duration
	until    time.Time
}

func newBreaker(failuresMax int, cooldownMin, cooldownMax time.Duration, onChange func(int)) *breaker {
	return &breaker{failuresMax: failuresMax, cooldownMin: cooldownMin, cooldownMax: cooldownMax,
		cooldown: cooldownMin, onChange: onChange}
}

// allow says whether a delivery may call the external system now; when it may not, wait is how long
// until the next probe.
func (b *breaker) allow(now time.Time) (ok bool, wait time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerClosed:
		return true, 0
	case breakerOpen:
		if now.Before(b.until) {
			return false, b.until.Sub(now)
		}
		b.set(breakerHalfOpen) // this delivery is the probe
		return true, 0
	}
	return false, b.cooldown // a probe is in flight
}

// success records an answer that shows the external system is up (2xx, or a refusal of one event).
func (b *breaker) success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = 0
	b.cooldown = b.cooldownMin
	b.set(breakerClosed)
}

// failure records an answer that shows the external system is down.
func (b *breaker) failure(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerHalfOpen:
		b.cooldown = min(2*b.cooldown, b.cooldownMax)
	case breakerClosed:
		b.failures++
		if b.failures < b.failuresMax {
			return
		}
		b.cooldown = b.cooldownMin
	default:
		return
	}
	b.until = now.Add(b.cooldown)
	b.set(breakerOpen)
}

// abandon releases a probe that ended without an answer about the external system (the caller went
// away): the next delivery probes instead.
func (b *breaker) abandon(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == breakerHalfOpen {
		b.until = now
		b.set(breakerOpen)
	}
}

func (b *breaker) current() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *breaker) set(state int) {
	if b.state == state {
		return
	}
	b.state = state
	if b.onChange != nil {
		b.onChange(state)
	}
}
