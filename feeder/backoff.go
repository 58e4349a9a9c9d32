package feeder

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff doubles a delay from min to max milliseconds, with up to backoffJitterPercent of jitter so
// replicas do not retry in step.
type backoff struct {
	minMs, maxMs, curMs int64
}

// backoffJitterPercent is the random part of each delay.
const backoffJitterPercent = 20

func newBackoff(minMs, maxMs int64) *backoff {
	return &backoff{minMs: minMs, maxMs: maxMs}
}

// next returns the delay before the next attempt.
func (b *backoff) next() time.Duration {
	if b.curMs == 0 {
		b.curMs = b.minMs
	} else {
		b.curMs = min(b.curMs*2, b.maxMs)
	}
	jitter := rand.Int64N(b.curMs*backoffJitterPercent/100 + 1)
	return time.Duration(b.curMs+jitter) * time.Millisecond
}

// reset starts again from the minimum after a success.
func (b *backoff) reset() { b.curMs = 0 }

// sleepCtx sleeps for d and reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
