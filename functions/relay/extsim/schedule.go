package extsim

import (
	"fmt"
	"strings"
	"time"
)

// Schedule is the simulated external system's opening hours: open for Open, then closed for Closed,
// over and over from the moment the simulator starts. A zero Closed means always open.
type Schedule struct {
	Open   time.Duration
	Closed time.Duration
}

// ParseSchedule reads "open=40s,closed=20s" (either part may come first; durations as Go writes
// them). The empty string is the always-open schedule.
func ParseSchedule(s string) (Schedule, error) {
	var sc Schedule
	if strings.TrimSpace(s) == "" {
		return sc, nil
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return Schedule{}, fmt.Errorf("schedule %q: %q is not key=duration", s, part)
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Schedule{}, fmt.Errorf("schedule %q: %s needs a positive duration, not %q", s, k, v)
		}
		if seen[k] {
			return Schedule{}, fmt.Errorf("schedule %q: %s given twice", s, k)
		}
		seen[k] = true
		switch k {
		case "open":
			sc.Open = d
		case "closed":
			sc.Closed = d
		default:
			return Schedule{}, fmt.Errorf("schedule %q: unknown key %q (want open, closed)", s, k)
		}
	}
	if sc.Closed > 0 && sc.Open == 0 {
		return Schedule{}, fmt.Errorf("schedule %q: a closed period needs an open period too", s)
	}
	return sc, nil
}

// String writes the schedule as ParseSchedule reads it.
func (s Schedule) String() string {
	if s.Closed == 0 {
		return "always open"
	}
	return fmt.Sprintf("open=%s,closed=%s", s.Open, s.Closed)
}

// at says whether the schedule is open at elapsed time since the start and, when closed, how long
// until it opens.
func (s Schedule) at(elapsed time.Duration) (open bool, opensIn time.Duration) {
	if s.Closed == 0 {
		return true, 0
	}
	phase := elapsed % (s.Open + s.Closed)
	if phase < s.Open {
		return true, 0
	}
	return false, s.Open + s.Closed - phase
}
