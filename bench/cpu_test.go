package main

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseProcStatCountsFieldsAfterTheName(t *testing.T) {
	// The command name may hold spaces and a ')'.
	line := "4242 (a b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 31 9 0 0 20 0 3 0 100 1000 10"
	p, ok := parseProcStat(line)
	if !ok || p.ppid != 17 || p.ticks != 40 {
		t.Fatalf("got %+v, %v; want ppid 17, ticks 40", p, ok)
	}
	if _, ok := parseProcStat("4242 (short) S 17"); ok {
		t.Fatal("a truncated line was read")
	}
}

// A group holds its root's descendants, but a descendant that is another group's root counts there.
func TestSampleCPUAssignsEachProcessToItsNearestRoot(t *testing.T) {
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
	groups := []cpuGroup{{name: "test", roots: []int{os.Getpid()}}, {name: "sleeper", roots: []int{sleeper.Process.Pid}}}
	a, err := sampleCPU(groups)
	if err != nil {
		t.Fatal(err)
	}
	burnUntil := time.Now().Add(400 * time.Millisecond)
	n := 0
	for time.Now().Before(burnUntil) {
		n++
	}
	b, err := sampleCPU(groups)
	if err != nil {
		t.Fatal(err)
	}
	busy, idle := groupDelta("test", a, b), groupDelta("sleeper", a, b)
	// 400 ms of CPU is 40 ticks; a busy machine may give the loop less of it, but not a tenth.
	if busy < 4 || idle > 2 {
		t.Fatalf("ticks: test %d (want ≥ 4), sleeper %d (want ≤ 2); %d loops", busy, idle, n)
	}
	if b.machineTotal <= a.machineTotal || b.machineBusy < a.machineBusy || b.switches < a.switches {
		t.Fatalf("machine counters went backwards or stood still: %+v then %+v", a, b)
	}
	figs := cpuFigures("x", groups, a, b)
	if len(figs) != len(groups)+2 {
		t.Fatalf("%d figures, want %d", len(figs), len(groups)+2)
	}
}

// A process that ends during the window is not subtracted from its group, and one that starts is
// counted whole.
func TestGroupDeltaSurvivesProcessesComingAndGoing(t *testing.T) {
	a := cpuSample{procs: map[int]groupTicks{1: {"g", 100}, 2: {"g", 5000}}}
	b := cpuSample{procs: map[int]groupTicks{1: {"g", 130}, 3: {"g", 7}, 4: {"h", 50}}}
	if got := groupDelta("g", a, b); got != 37 {
		t.Fatalf("delta %d, want 37", got)
	}
}
