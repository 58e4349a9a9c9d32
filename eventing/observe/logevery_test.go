package observe

import (
	"testing"
	"time"
)

func TestLogEveryLetsOneLinePerIntervalAndCountsTheRest(t *testing.T) {
	l := NewLogEvery(time.Second)
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	if ok, held := l.Allow(t0); !ok || held != 0 {
		t.Fatalf("first: %v %d", ok, held)
	}
	for i := range 5 {
		if ok, _ := l.Allow(t0.Add(time.Duration(i+1) * 100 * time.Millisecond)); ok {
			t.Fatalf("line %d within the interval was let through", i)
		}
	}
	if ok, held := l.Allow(t0.Add(time.Second)); !ok || held != 5 {
		t.Fatalf("after the interval: %v, held %d, want true, 5", ok, held)
	}
	if ok, held := l.Allow(t0.Add(3 * time.Second)); !ok || held != 0 {
		t.Fatalf("later: %v %d", ok, held)
	}
}
