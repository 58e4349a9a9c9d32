package observe

import (
	"sync"
	"time"
)

// LogEvery lets one log line through per interval. A fault that repeats for every message (a
// provider whose clock runs ahead sends a thousand refused quotes a second) is still logged, with how
// many lines were held back since, without flooding the log; metrics still count every occurrence.
type LogEvery struct {
	interval time.Duration
	mu       sync.Mutex
	last     time.Time
	held     int
}

// NewLogEvery returns a LogEvery that allows a line when interval has passed since the last one.
func NewLogEvery(interval time.Duration) *LogEvery { return &LogEvery{interval: interval} }

// Allow reports whether a line may be logged at now, and how many were held back before it.
func (l *LogEvery) Allow(now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.interval {
		l.held++
		return false, 0
	}
	held, l.held, l.last = l.held, 0, now
	return true, held
}
