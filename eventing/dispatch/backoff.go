package dispatch

import (
	"math"
	"net/http"
	"time"
)

// Knative's data-plane defaults, applied where a manifest leaves a field out.
const (
	// timeoutDefaultMs bounds an attempt when the delivery sets no timeout (WebClientCloudEventSender).
	timeoutDefaultMs = 600_000
)

// Retrying the dead-letter sink. Knative gives up on it after the delivery's own retries and commits
// the offset anyway; the local dispatcher keeps going on the delivery's schedule clamped to these.
const (
	deadLetterRetryDelayMinMs = 100
	deadLetterRetryDelayMaxMs = 30_000
)

// schedule is a Delivery with its durations scaled and its defaults filled: what one consumer runs.
type schedule struct {
	retry   int
	policy  BackoffPolicy
	delay   time.Duration
	timeout time.Duration
	// dlsMin and dlsMax clamp the waits between attempts at the dead-letter sink.
	dlsMin, dlsMax time.Duration
}

// newSchedule fills Knative's default timeout into d and divides every duration by timeScale (at least 1).
func newSchedule(d Delivery, timeScale int) schedule {
	if timeScale < 1 {
		timeScale = 1
	}
	s := schedule{retry: d.Retry, policy: d.BackoffPolicy, delay: d.BackoffDelay, timeout: d.Timeout,
		dlsMin: deadLetterRetryDelayMinMs * time.Millisecond, dlsMax: deadLetterRetryDelayMaxMs * time.Millisecond}
	if s.policy == "" {
		s.policy = BackoffExponential
	}
	if s.timeout == 0 {
		s.timeout = timeoutDefaultMs * time.Millisecond
	}
	scale := time.Duration(timeScale)
	s.delay /= scale
	s.timeout /= scale
	s.dlsMin /= scale
	s.dlsMax /= scale
	return s
}

// backoff is the wait before retry k (k >= 1): delay × k (linear) or delay × 2^k (exponential), exactly
// Knative's computeRetryPolicy. It saturates instead of overflowing.
func (s schedule) backoff(k int) time.Duration {
	if k < 1 || s.delay <= 0 {
		return 0
	}
	factor := int64(k)
	if s.policy == BackoffExponential {
		if k >= 62 {
			return math.MaxInt64
		}
		factor = int64(1) << k
	}
	if int64(s.delay) > math.MaxInt64/factor {
		return math.MaxInt64
	}
	return s.delay * time.Duration(factor)
}

// deadLetterBackoff is the wait before attempt k+1 at the dead-letter sink: the delivery's own
// backoff, clamped so that it neither spins nor stalls for hours.
func (s schedule) deadLetterBackoff(k int) time.Duration {
	return min(max(s.backoff(k), s.dlsMin), s.dlsMax)
}

// retryable says whether a failed attempt may be retried, per the Knative data-plane spec: no
// response at all (connection error, timeout), 404, 408, 409, 429 and 5xx. Any other status that is
// not 2xx (3xx included) is final.
func retryable(status int) bool {
	switch {
	case status == 0, status >= 500:
		return true
	}
	switch status {
	case http.StatusNotFound, http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests:
		return true
	}
	return false
}

// succeeded says whether the subscriber accepted the event.
func succeeded(status int) bool { return status >= 200 && status < 300 }
