package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Supervision limits: a child that exits is restarted after a delay that doubles up to
// restartDelayMaxMs (deliberately unbounded in count, as a Deployment restarts pods forever); one that
// ran for stableRunMs resets the delay. On shutdown a child gets stopGraceMs after SIGTERM before SIGKILL.
const (
	restartDelayMinMs = 200
	restartDelayMaxMs = 5_000
	stableRunMs       = 10_000
	stopGraceMs       = 10_000
)

// childSpec is one supervised child process of kawase dev: the kawase binary with args and extra env.
type childSpec struct {
	name string
	args []string
	env  []string
}

// children tracks the PIDs of running children, for dev.json, so a user can kill -9 one.
type children struct {
	mu   sync.Mutex
	pids map[string]int
}

func (c *children) set(name string, pid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pids == nil {
		c.pids = map[string]int{}
	}
	if pid == 0 {
		delete(c.pids, name)
		return
	}
	c.pids[name] = pid
}

func (c *children) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.pids))
	for k, v := range c.pids {
		out[k] = v
	}
	return out
}

// supervise runs spec until ctx ends, restarting it whenever it exits, the way a Deployment keeps its
// replicas running. onChange is called with the new PID (0 when the child is down).
func supervise(ctx context.Context, log *zap.SugaredLogger, bin string, spec childSpec, onChange func(pid int)) error {
	delay := time.Duration(restartDelayMinMs) * time.Millisecond
	for {
		started := time.Now()
		err := runChild(ctx, bin, spec, onChange)
		onChange(0)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > stableRunMs*time.Millisecond {
			delay = restartDelayMinMs * time.Millisecond
		}
		log.Warnw("child exited; restarting", "child", spec.name, "error", err, "delay", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, restartDelayMaxMs*time.Millisecond)
	}
}

// runChild starts the child in its own process group (so a terminal's Ctrl-C reaches only us and we
// stop children in order) and waits for it; when ctx ends it sends SIGTERM, then SIGKILL after the grace.
func runChild(ctx context.Context, bin string, spec childSpec, onChange func(pid int)) error {
	cmd := exec.Command(bin, spec.args...)
	cmd.Env = append(os.Environ(), spec.env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", spec.name, err)
	}
	onChange(cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return exitError(spec.name, err)
	case <-ctx.Done():
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return exitError(spec.name, err)
	case <-time.After(stopGraceMs * time.Millisecond):
		_ = cmd.Process.Kill()
		return exitError(spec.name, <-done)
	}
}

func exitError(name string, err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%s: %s", name, ee.ProcessState)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
