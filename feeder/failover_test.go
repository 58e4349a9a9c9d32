package feeder

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kawase-fx/kawase/feeder/fixsim"
)

// Failover limits from the issue: the standby publishes within failoverWindow of the leader's death,
// and no pair's rates are further apart than that.
const (
	failoverWindow = 3 * time.Second
	// freezeWaitSeconds bounds the takeover after SIGSTOP: the PostgreSQL lease expires, then the
	// provider notices the frozen session by its heartbeat and lets the new leader log on.
	freezeWaitSeconds = 20
	// afterWakeWatch is how long the topic is watched after SIGCONT.
	afterWakeWatch    = 4 * time.Second
	childStartSeconds = 30
	// racePairs is how many pairs the replicas quote when built with the race detector, which cannot
	// keep up with 1,000 quotes a second.
	racePairs = 10
)

// child is a feeder replica in its own process.
type child struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string
	done chan struct{}
}

func startChild(t *testing.T, name, fixAddr, brokerAddr, dbURL string, pairs string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // dies with the test binary
	cmd.Env = append(os.Environ(), childEnv+"="+name, childFIXEnv+"="+fixAddr, childBrokerEnv+"="+brokerAddr,
		childDBEnv+"="+dbURL, childPairsEnv+"="+pairs)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.out = append(c.out, sc.Text())
			c.mu.Unlock()
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-c.done
		if t.Failed() || os.Getenv("KAWASE_FEEDER_TEST_SHOW") != "" {
			t.Logf("--- replica %s output:\n%s", name, strings.Join(c.lines(), "\n"))
		}
	})
	return c
}

func (c *child) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.out...)
}

// logged counts the child's log lines containing s.
func (c *child) logged(s string) int {
	n := 0
	for _, l := range c.lines() {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func (c *child) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// epochs summarizes the topic: the highest epoch seen, and the first producer time of each epoch.
func epochsOf(rates []seenRate) (maxEpoch int64, first map[int64]time.Time, count map[int64]int) {
	first, count = map[int64]time.Time{}, map[int64]int{}
	for _, r := range rates {
		e := r.rate.Epoch
		count[e]++
		maxEpoch = max(maxEpoch, e)
		if f, ok := first[e]; !ok || r.time.Before(f) {
			first[e] = r.time
		}
	}
	return maxEpoch, first, count
}

func waitEpochAbove(t *testing.T, tl *tail, above int64, timeout time.Duration) int64 {
	t.Helper()
	var got int64
	waitFor(t, timeout, "a rate with an epoch above "+strconv.FormatInt(above, 10), func() bool {
		rates, _ := tl.snapshot()
		got, _, _ = epochsOf(rates)
		return got > above
	})
	return got
}

// checkFenced checks that in every partition no rate of an epoch below newEpoch follows the first
// rate of newEpoch.
func checkFenced(t *testing.T, rates []seenRate, newEpoch int64) {
	t.Helper()
	seen := map[int]bool{}
	for _, r := range rates {
		if r.rate.Epoch >= newEpoch {
			seen[r.partition] = true
			continue
		}
		if seen[r.partition] {
			t.Fatalf("partition %d: rate %s of epoch %d after epoch %d began", r.partition, r.id, r.rate.Epoch, newEpoch)
		}
	}
}

// maxGap is the longest provider-time gap between consecutive rates of one pair.
func maxGap(rates []seenRate) (time.Duration, string) {
	var worst time.Duration
	var which string
	for p, rs := range byPair(rates) {
		for i := 1; i < len(rs); i++ {
			if g := rs[i].rate.ProviderTime.Sub(rs[i-1].rate.ProviderTime); g > worst {
				worst, which = g, string(p)
			}
		}
	}
	return worst, which
}

// TestFailoverAcrossProcesses runs two feeder processes against one simulator, broker and database:
// SIGKILL of the leader hands over within failoverWindow with fenced epochs and no long gap; then
// SIGSTOP of the new leader past its lease hands over again, and after SIGCONT the frozen replica
// publishes nothing more.
func TestFailoverAcrossProcesses(t *testing.T) {
	brokerAddr := startBroker(t)
	db := migratedDB(t)
	sim := startSim(t, fixsim.Config{Interval: 50 * time.Millisecond})
	tl := tailRates(t, brokerAddr)
	quoted := allPairs()
	if raceEnabled {
		quoted = quoted[:racePairs]
	}
	pairs := strings.Join(pairNames(quoted), ",")

	a := startChild(t, "a", sim.Addr(), brokerAddr, db, pairs)
	e1 := waitEpochAbove(t, tl, 0, childStartSeconds*time.Second)
	b := startChild(t, "b", sim.Addr(), brokerAddr, db, pairs)
	waitFor(t, childStartSeconds*time.Second, "replica b standing by", func() bool { return b.logged("feeder standing by") > 0 })
	time.Sleep(time.Second)

	killedAt := time.Now()
	a.signal(t, syscall.SIGKILL)
	e2 := waitEpochAbove(t, tl, e1, 10*time.Second)
	time.Sleep(2 * time.Second)
	rates, err := tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	_, first, _ := epochsOf(rates)
	took := first[e2].Sub(killedAt)
	gap, gapPair := maxGap(rates)
	t.Logf("SIGKILL: epoch %d → %d, standby published %s after the kill; longest gap %s (%s)", e1, e2, took, gap, gapPair)
	if took > failoverWindow {
		t.Errorf("standby published %s after the kill, want within %s", took, failoverWindow)
	}
	if gap > failoverWindow {
		t.Errorf("%s: %s between two rates, want at most %s", gapPair, gap, failoverWindow)
	}
	checkFenced(t, rates, e2)

	a2 := startChild(t, "a2", sim.Addr(), brokerAddr, db, pairs)
	waitFor(t, childStartSeconds*time.Second, "replica a2 standing by", func() bool { return a2.logged("feeder standing by") > 0 })
	frozenAt := time.Now()
	b.signal(t, syscall.SIGSTOP)
	e3 := waitEpochAbove(t, tl, e2, freezeWaitSeconds*time.Second)
	time.Sleep(time.Second)
	rates, _ = tl.snapshot()
	_, first, count := epochsOf(rates)
	before := count[e2]
	t.Logf("SIGSTOP: epoch %d → %d, new leader published %s after the freeze", e2, e3, first[e3].Sub(frozenAt))

	b.signal(t, syscall.SIGCONT)
	wokeAt := time.Now()
	waitFor(t, 10*time.Second, "the woken replica to notice", func() bool { return b.logged("leadership ended") > 0 })
	time.Sleep(afterWakeWatch - time.Since(wokeAt))
	rates, err = tl.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	_, _, count = epochsOf(rates)
	if count[e2] != before {
		t.Fatalf("the frozen leader published %d rate(s) of epoch %d after waking", count[e2]-before, e2)
	}
	checkFenced(t, rates, e3)
	t.Logf("after SIGCONT: epoch %d rates %d before and after; the woken replica logged %q", e2, before,
		"leadership ended")
}

func pairNames[P ~string](ps []P) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}
