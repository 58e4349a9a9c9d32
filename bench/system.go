package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// systemTimeoutS bounds the whole system scenario (build, start, every measurement, stop).
const systemTimeoutS = 600

// systemRun is the state the system scenario's measurements share: the one `kawase dev` they all
// measure, and the figures gathered so far.
type systemRun struct {
	dev  *devProcess
	figs []figure
	// freshBefore is the freshness histogram before the rates loads.
	freshBefore histogram
	// freshAtGoal is what the freshness histogram grew by during kawase's open-loop GET rounds.
	freshAtGoal histogram
	// trade is what the trading load did, for the relay drain that follows it.
	trade tradeOutcome
}

// systemStep is one measurement of the system scenario.
type systemStep struct {
	name string
	run  func(ctx context.Context, s *systemRun) ([]figure, error)
}

// systemSteps run in this order against one `kawase dev`: freshness with no other load, the rates
// loads (framed by freshness scrapes), then the trading load, the relay's drain of its executions, and pgbench last so it does
// not compete with the drain.
var systemSteps = []systemStep{
	{name: "freshness idle", run: measureFreshnessIdle},
	{name: "freshness before", run: scrapeFreshnessBefore},
	{name: "rates GET", run: measureRatesGet},
	{name: "rates freshness at the goal's load", run: measureFreshnessAtGoal},
	{name: "rates SSE", run: measureStream},
	{name: "rates freshness", run: measureFreshness},
	{name: "trading", run: measureTrading},
	{name: "relay drain", run: measureRelayDrain},
	{name: "pgbench", run: measurePgbench},
}

// runSystem builds kawase, starts `kawase dev` once on a fresh data directory and free ports, runs
// every system measurement against it in sequence and stops it with SIGINT. A measurement that fails
// becomes a "failed" figure naming the error, so the others still report.
func runSystem(ctx context.Context) ([]figure, error) {
	ctx, cancel := context.WithTimeout(ctx, systemTimeoutS*time.Second)
	defer cancel()
	raiseFileLimit()
	dir, err := os.MkdirTemp("", "kawase-bench-")
	if err != nil {
		return nil, fmt.Errorf("system: %w", err)
	}
	started := time.Now()
	bin, err := buildKawase(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	dev, err := startDev(ctx, bin, dir)
	if err != nil {
		return nil, fmt.Errorf("system (files kept in %s): %w", dir, err)
	}
	fmt.Printf("   kawase dev ready in %v at %s (log %s)\n", time.Since(started).Round(time.Second), dev.state.HTTP, dev.logPath)
	s := &systemRun{dev: dev}
	failed := s.runSteps(ctx)
	if err := dev.stop(); err != nil {
		failed = true
		s.figs = append(s.figs, failedFigure("stop kawase dev", err))
	}
	if failed {
		fmt.Printf("   some measurements failed; kawase dev's files kept in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	return s.figs, nil
}

// runSteps runs every system step and reports whether any failed.
func (s *systemRun) runSteps(ctx context.Context) bool {
	failed := false
	for _, st := range systemSteps {
		err := s.dev.alive()
		var got []figure
		if err == nil {
			fmt.Printf("   -- %s\n", st.name)
			got, err = st.run(ctx, s)
		}
		if err != nil {
			failed = true
			fmt.Fprintf(os.Stderr, "bench: system %s: %v\n", st.name, err)
			got = append(got, failedFigure(st.name, err))
		}
		s.figs = append(s.figs, got...)
	}
	return failed
}

func failedFigure(step string, err error) figure {
	return figure{Name: "system: " + step, Value: "failed", Unit: "-", Note: err.Error()}
}

// raiseFileLimit lifts the soft open-files limit to the hard one, explicitly so that `kawase dev`
// inherits it too: thousands of SSE streams need a descriptor each on both sides.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintf(os.Stderr, "bench: raise RLIMIT_NOFILE: %v\n", err)
	}
}

// openFileLimit is the current soft open-files limit.
func openFileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}

// f1 formats a measurement with one decimal.
func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// f2 formats a measurement with two decimals.
func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }

// f0 formats a measurement rounded to a whole number.
func f0(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
