package relay

import (
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	want := map[int]string{200: outcomeDelivered, 202: outcomeDelivered, 204: outcomeDelivered,
		400: outcomeRejected, 409: outcomeUnavailable, 410: outcomeRejected, 422: outcomeRejected,
		401: outcomeUnavailable, 403: outcomeUnavailable, 404: outcomeUnavailable, 408: outcomeUnavailable,
		425: outcomeUnavailable, 429: outcomeUnavailable, 500: outcomeUnavailable, 503: outcomeUnavailable,
		302: outcomeUnavailable}
	for status, w := range want {
		if got := classify(status); got != w {
			t.Errorf("classify(%d) = %s, want %s", status, got, w)
		}
	}
}

// TestBreakerCooldownDoublesAndProbesOnce walks the breaker through its states on a fake clock.
func TestBreakerCooldownDoublesAndProbesOnce(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBreaker(2, time.Second, 3*time.Second, nil)
	b.failure(now)
	if ok, _ := b.allow(now); !ok {
		t.Fatal("opened before failuresMax")
	}
	b.failure(now)
	if ok, wait := b.allow(now); ok || wait != time.Second {
		t.Fatalf("after 2 failures: allow %v, wait %s", ok, wait)
	}
	now = now.Add(time.Second)
	if ok, _ := b.allow(now); !ok {
		t.Fatal("no probe after the cooldown")
	}
	if ok, _ := b.allow(now); ok {
		t.Fatal("a second call while the probe is in flight")
	}
	b.failure(now) // the probe failed: cooldown doubles
	if ok, wait := b.allow(now); ok || wait != 2*time.Second {
		t.Fatalf("after a failed probe: allow %v, wait %s", ok, wait)
	}
	now = now.Add(2 * time.Second)
	b.allow(now)
	b.failure(now) // doubles again, capped at 3 s
	if _, wait := b.allow(now); wait != 3*time.Second {
		t.Fatalf("cooldown %s, want the 3 s cap", wait)
	}
	now = now.Add(3 * time.Second)
	b.allow(now)
	b.abandon(now) // the probe's caller left: the next call probes at once
	if ok, _ := b.allow(now); !ok {
		t.Fatal("no probe after an abandoned one")
	}
	b.success()
	if ok, _ := b.allow(now); !ok || b.current() != breakerClosed {
		t.Fatal("a successful probe did not close the breaker")
	}
}
