package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicksPerSec is USER_HZ, the unit of /proc's CPU times: 100 on every Linux architecture Go
// supports.
const clockTicksPerSec = 100

// cpuGroup is a set of processes whose CPU time is added up: its roots and every descendant not
// nearer to another group's root.
type cpuGroup struct {
	name  string
	roots []int
}

// cpuSample is the CPU time, in clock ticks, of each group's processes and of the whole machine at
// one moment.
type cpuSample struct {
	at           time.Time
	procs        map[int]groupTicks
	machineBusy  uint64
	machineTotal uint64
	switches     uint64 // context switches since boot, every CPU
}

// groupTicks is one process's group and CPU time.
type groupTicks struct {
	group string
	ticks uint64
}

// groupDelta is the CPU time group g's processes used from a to b: a process already there in a
// counts what it added, one started since counts all of its time, and one that ended meanwhile is
// lost (its time is no longer in /proc), never subtracted.
func groupDelta(g string, a, b cpuSample) uint64 {
	var sum uint64
	for pid, p := range b.procs {
		if p.group != g {
			continue
		}
		if old, ok := a.procs[pid]; ok && old.group == g && old.ticks <= p.ticks {
			sum += p.ticks - old.ticks
		} else if !ok {
			sum += p.ticks
		}
	}
	return sum
}

// sampleCPU reads /proc once: the machine's totals and each group's processes.
func sampleCPU(groups []cpuGroup) (cpuSample, error) {
	s := cpuSample{at: time.Now(), procs: map[int]groupTicks{}}
	if err := s.readMachine(); err != nil {
		return s, err
	}
	procs, err := readProcs()
	if err != nil {
		return s, err
	}
	owner := map[int]string{}
	for _, g := range groups {
		for _, pid := range g.roots {
			owner[pid] = g.name
		}
	}
	for pid, p := range procs {
		// The nearest root above (or at) the process names its group; a cycle cannot occur in a
		// snapshot's parent links except through pid 0, where the walk stops.
		for at, hops := pid, 0; at > 1 && hops < len(procs); at, hops = procs[at].ppid, hops+1 {
			if name, ok := owner[at]; ok {
				s.procs[pid] = groupTicks{group: name, ticks: p.ticks}
				break
			}
			if _, ok := procs[at]; !ok {
				break
			}
		}
	}
	return s, nil
}

// readMachine reads the aggregate cpu line and the context-switch count of /proc/stat.
func (s *cpuSample) readMachine() error {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return fmt.Errorf("cpu sample: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sawCPU := false
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) > 4 && fields[0] == "cpu":
			for i, v := range fields[1:] {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return fmt.Errorf("cpu sample: /proc/stat cpu field %d: %w", i+1, err)
				}
				if i >= 8 { // guest time is already counted in user time
					break
				}
				s.machineTotal += n
				if i != 3 && i != 4 && i != 7 { // idle, iowait, and steal (the hypervisor's, not ours)
					s.machineBusy += n
				}
			}
			sawCPU = true
		case len(fields) == 2 && fields[0] == "ctxt":
			n, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return fmt.Errorf("cpu sample: /proc/stat ctxt: %w", err)
			}
			s.switches = n
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cpu sample: %w", err)
	}
	if !sawCPU {
		return errors.New("cpu sample: /proc/stat has no cpu line")
	}
	return nil
}

type procTimes struct {
	ppid  int
	ticks uint64 // utime + stime
}

// readProcs reads every process's parent and CPU time; processes that end meanwhile are skipped.
func readProcs() (map[int]procTimes, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("cpu sample: %w", err)
	}
	procs := make(map[int]procTimes, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // it ended
		}
		if p, ok := parseProcStat(string(b)); ok {
			procs[pid] = p
		}
	}
	return procs, nil
}

// parseProcStat reads the parent pid and utime+stime of one /proc/<pid>/stat line; the command name
// (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
func parseProcStat(line string) (procTimes, bool) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return procTimes{}, false
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procTimes{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	utime, err2 := strconv.ParseUint(f[11], 10, 64)
	stime, err3 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procTimes{}, false
	}
	return procTimes{ppid: ppid, ticks: utime + stime}, true
}

// devCPUGroups are the processes of a `kawase dev`: itself (every function, the broker, the
// dispatcher), its supervised children by name, and its PostgreSQL server, found by the
// postmaster.pid file under its data directory.
func devCPUGroups(p *devProcess) ([]cpuGroup, error) {
	groups := []cpuGroup{{name: "kawase dev", roots: []int{p.state.PID}}}
	var feeders []int
	for _, name := range slices.Sorted(maps.Keys(p.state.Children)) {
		if strings.HasPrefix(name, "feeder") {
			feeders = append(feeders, p.state.Children[name])
			continue
		}
		groups = append(groups, cpuGroup{name: name, roots: []int{p.state.Children[name]}})
	}
	if len(feeders) > 0 {
		groups = append(groups, cpuGroup{name: fmt.Sprintf("feeders (%d replicas)", len(feeders)), roots: feeders})
	}
	postmaster, err := findPostmaster(p.dataDir)
	if err != nil {
		return nil, err
	}
	return append(groups, cpuGroup{name: "PostgreSQL", roots: []int{postmaster}}), nil
}

// findPostmaster returns the pid in the first postmaster.pid under dir.
func findPostmaster(dir string) (int, error) {
	var pid int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "postmaster.pid" {
			return nil // a directory it may not read (PostgreSQL's own) is skipped
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		first, _, _ := strings.Cut(string(b), "\n")
		if pid, err = strconv.Atoi(strings.TrimSpace(first)); err != nil {
			return fmt.Errorf("%s: first line %q is not a pid", path, first)
		}
		return fs.SkipAll
	})
	if err != nil {
		return 0, fmt.Errorf("find postgres: %w", err)
	}
	if pid == 0 {
		return 0, fmt.Errorf("find postgres: no postmaster.pid under %s", dir)
	}
	return pid, nil
}

// cpuFigures reports what each group and the machine used between two samples, in percent of one
// core, and the machine's context switches a second.
func cpuFigures(what string, groups []cpuGroup, a, b cpuSample) []figure {
	secs := b.at.Sub(a.at).Seconds()
	pct := func(ticks uint64) string { return f1(float64(ticks) / clockTicksPerSec / secs * 100) }
	var figs []figure
	for i, g := range groups {
		note := ""
		if i == 0 {
			note = fmt.Sprintf("per-process CPU time from /proc over %.0f s, in %% of one core (%d cores: %d%% is all of them); user and kernel time", secs, runtime.NumCPU(), 100*runtime.NumCPU())
		}
		figs = append(figs, figure{Name: what + ": " + g.name, Value: pct(groupDelta(g.name, a, b)), Unit: "% of a core", Note: note})
	}
	machine := float64(b.machineBusy-a.machineBusy) / float64(max(b.machineTotal-a.machineTotal, 1)) * 100 * float64(runtime.NumCPU())
	return append(figs,
		figure{Name: what + ": whole machine", Value: f1(machine), Unit: "% of a core", Note: "/proc/stat, everything but idle, iowait and steal, the bench itself included"},
		figure{Name: what + ": context switches, whole machine", Value: f0(float64(b.switches-a.switches) / secs), Unit: "switches/s", Note: "/proc/stat ctxt; on a virtual machine each costs far more than on bare metal"})
}
