package dispatch

import (
	"math"
	"testing"
	"time"
)

// TestBackoffIsKnativesSchedule pins the waits to Knative's computeRetryPolicy: linear delay × k,
// exponential delay × 2^k (the first retry already waits two delays), every duration divided by the
// time scale, and no overflow for absurd retry counts.
func TestBackoffIsKnativesSchedule(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name  string
		d     Delivery
		scale int
		want  []time.Duration // retries 1, 2, 3, 4
	}{
		{"exponential", Delivery{Retry: 4, BackoffPolicy: BackoffExponential, BackoffDelay: 200 * ms}, 1,
			[]time.Duration{400 * ms, 800 * ms, 1600 * ms, 3200 * ms}},
		{"linear", Delivery{Retry: 4, BackoffPolicy: BackoffLinear, BackoffDelay: 3 * time.Second}, 1,
			[]time.Duration{3 * time.Second, 6 * time.Second, 9 * time.Second, 12 * time.Second}},
		{"default policy is exponential", Delivery{Retry: 4, BackoffDelay: 100 * ms}, 1,
			[]time.Duration{200 * ms, 400 * ms, 800 * ms, 1600 * ms}},
		{"scaled", Delivery{Retry: 4, BackoffPolicy: BackoffLinear, BackoffDelay: 3 * time.Second}, 30,
			[]time.Duration{100 * ms, 200 * ms, 300 * ms, 400 * ms}},
		{"no delay retries at once", Delivery{Retry: 4, BackoffPolicy: BackoffLinear}, 1,
			[]time.Duration{0, 0, 0, 0}},
	}
	for _, tc := range cases {
		s := newSchedule(tc.d, tc.scale)
		for k, want := range tc.want {
			if got := s.backoff(k + 1); got != want {
				t.Errorf("%s: retry %d waits %v, want %v", tc.name, k+1, got, want)
			}
		}
	}
	s := newSchedule(Delivery{Retry: 100, BackoffDelay: time.Hour}, 1)
	if got := s.backoff(70); got != math.MaxInt64 {
		t.Errorf("retry 70 of an hourly exponential schedule waits %v, want saturation", got)
	}
	if got := newSchedule(Delivery{}, 1).timeout; got != timeoutDefaultMs*time.Millisecond {
		t.Errorf("default timeout %v, want Knative's %dms", got, timeoutDefaultMs)
	}
	if got := newSchedule(Delivery{Timeout: 10 * time.Second}, 10).timeout; got != time.Second {
		t.Errorf("scaled timeout %v, want 1s", got)
	}
}

// TestDeadLetterBackoffIsClamped: the dead-letter sink is retried on the delivery's schedule, never
// faster than deadLetterRetryDelayMinMs nor slower than deadLetterRetryDelayMaxMs (both scaled).
func TestDeadLetterBackoffIsClamped(t *testing.T) {
	s := newSchedule(Delivery{Retry: 3, BackoffPolicy: BackoffExponential, BackoffDelay: time.Second}, 1)
	if got := s.deadLetterBackoff(1); got != 2*time.Second {
		t.Errorf("first dead-letter wait %v, want 2s", got)
	}
	if got := s.deadLetterBackoff(40); got != deadLetterRetryDelayMaxMs*time.Millisecond {
		t.Errorf("40th dead-letter wait %v, want the cap", got)
	}
	if got := newSchedule(Delivery{}, 1).deadLetterBackoff(1); got != deadLetterRetryDelayMinMs*time.Millisecond {
		t.Errorf("dead-letter wait without backoff %v, want the floor", got)
	}
	if got := newSchedule(Delivery{}, 10).deadLetterBackoff(1); got != deadLetterRetryDelayMinMs*time.Millisecond/10 {
		t.Errorf("scaled dead-letter floor %v", got)
	}
}

// TestRetryableStatuses is the Knative data-plane table.
func TestRetryableStatuses(t *testing.T) {
	for status, want := range map[int]bool{0: true, 404: true, 408: true, 409: true, 429: true, 500: true, 502: true,
		503: true, 504: true, 400: false, 401: false, 403: false, 405: false, 410: false, 413: false, 415: false,
		422: false, 301: false, 302: false, 307: false} {
		if got := retryable(status); got != want {
			t.Errorf("retryable(%d) = %v, want %v", status, got, want)
		}
	}
	for status, want := range map[int]bool{200: true, 201: true, 202: true, 204: true, 299: true, 300: false, 199: false} {
		if got := succeeded(status); got != want {
			t.Errorf("succeeded(%d) = %v, want %v", status, got, want)
		}
	}
}
