package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kawase-fx/kawase/functions/trading"
)

// Sizes of the system scenario's trading, relay and pgbench measurements.
const (
	tradeAccounts  = 64
	tradeDurationS = 20
	// tradeWarmupS is an unmeasured load on other accounts first: the pools' connections, the
	// broker's and PostgreSQL's caches and the heap reach their working size, as in a system that has
	// been trading (the first seconds after a start run about 15% slower).
	tradeWarmupS          = 5
	tradeGoalOrdersPerSec = 2_000
	relayDrainTimeoutS    = 60
	relayStallS           = 10
	relayPollMs           = 500
	pgbenchPath           = "/usr/bin/pgbench"
	pgbenchDatabase       = "kawase_bench"
	pgbenchScale          = "10"
	pgbenchClients        = "12"
	pgbenchThreads        = "2"
	pgbenchDurationS      = 20
	pgbenchTimeoutS       = 180
)

// tradeOutcome is what the trading load left for the relay drain to check.
type tradeOutcome struct {
	res        trading.LoadResult
	start, end time.Time
	// acceptedBefore is extsim's count before the warm-up; warmupFilled the warm-up's fills, which the
	// relay delivers too.
	acceptedBefore int64
	warmupFilled   int
}

// extsimStats is the part of the external-system simulator's GET /stats the bench reads.
type extsimStats struct {
	Accepted        int64      `json:"accepted"`
	Duplicates      int64      `json:"duplicates"`
	BadSignatures   int64      `json:"badSignatures"`
	Gaps            int64      `json:"gaps"`
	Reorders        int64      `json:"reorders"`
	SeqConflicts    int64      `json:"seqConflicts"`
	Malformed       int64      `json:"malformed"`
	ClosedAnswers   int64      `json:"closedAnswers"`
	FirstAcceptedAt *time.Time `json:"firstAcceptedAt"`
	LastAcceptedAt  *time.Time `json:"lastAcceptedAt"`
}

func getExtsimStats(ctx context.Context, base string) (extsimStats, error) {
	var st extsimStats
	body, err := httpGet(ctx, base+"/stats")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("extsim stats: %w", err)
	}
	return st, nil
}

// measureTrading holds the external-system simulator open (dev runs it on a schedule), then runs the
// market-order load against the dev's REST API.
func measureTrading(ctx context.Context, s *systemRun) ([]figure, error) {
	if s.dev.state.Extsim == "" {
		return nil, errors.New("dev.json names no extsim")
	}
	if _, err := httpDo(ctx, "POST", s.dev.state.Extsim+"/control/open"); err != nil {
		return nil, err
	}
	before, err := getExtsimStats(ctx, s.dev.state.Extsim)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	warm, err := trading.Load(ctx, trading.LoadConfig{URL: s.dev.state.HTTP, AdminToken: s.dev.state.AdminToken,
		Accounts: tradeAccounts, Duration: tradeWarmupS * time.Second})
	if err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	fmt.Printf("      warm-up, not counted: %d orders in %v (%.0f/s)\n", warm.Orders, warm.Elapsed.Round(time.Millisecond), warm.OrdersPerSecond)
	s.trade = tradeOutcome{start: start, acceptedBefore: before.Accepted, warmupFilled: warm.Filled}
	res, err := trading.Load(ctx, trading.LoadConfig{URL: s.dev.state.HTTP, AdminToken: s.dev.state.AdminToken,
		Accounts: tradeAccounts, Duration: tradeDurationS * time.Second})
	s.trade.res, s.trade.end = res, time.Now()
	if err != nil {
		return nil, err
	}
	fmt.Printf("      %d orders (%d filled, %d rejected, %d pending, %d errors) in %v: %.0f orders/s, p50 %v, p99 %v\n",
		res.Orders, res.Filled, res.Rejected, res.Pending, res.Errors, res.Elapsed.Round(time.Millisecond), res.OrdersPerSecond, res.P50, res.P99)
	return tradingFigures(res), nil
}

func tradingFigures(r trading.LoadResult) []figure {
	note := fmt.Sprintf("goal %d orders/s; %d accounts, one order in flight each, %d s after a %d s warm-up on other accounts; %d orders: %d filled, %d rejected, %d pending (202), %d errors",
		tradeGoalOrdersPerSec, tradeAccounts, tradeDurationS, tradeWarmupS, r.Orders, r.Filled, r.Rejected, r.Pending, r.Errors)
	if len(r.ErrorSamples) > 0 {
		note += "; e.g. " + strings.Join(r.ErrorSamples, " | ")
	}
	return []figure{
		{Name: "market orders via REST (kawase dev) throughput", Value: f0(r.OrdersPerSecond), Unit: "orders/s", Note: note},
		{Name: "market orders via REST (kawase dev) latency p50", Value: ms(r.P50), Unit: "ms"},
		{Name: "market orders via REST (kawase dev) latency p99", Value: ms(r.P99), Unit: "ms", Note: "max " + ms(r.Max) + " ms"},
	}
}

// measureRelayDrain waits until the external-system simulator has every execution of the trading
// load (or its count stops rising) and reports the delivery rate and the receiver's integrity counters.
func measureRelayDrain(ctx context.Context, s *systemRun) ([]figure, error) {
	want := int64(s.trade.res.Filled + s.trade.warmupFilled)
	st, err := waitRelayDrain(ctx, s.dev.state.Extsim, s.trade.acceptedBefore+want)
	if err != nil {
		return nil, err
	}
	delivered := st.Accepted - s.trade.acceptedBefore
	if st.LastAcceptedAt == nil || delivered <= 0 {
		return nil, fmt.Errorf("extsim accepted nothing of %d filled orders within %d s", want, relayDrainTimeoutS)
	}
	first := s.trade.start
	if s.trade.acceptedBefore == 0 && st.FirstAcceptedAt != nil {
		first = *st.FirstAcceptedAt
	}
	span := st.LastAcceptedAt.Sub(first)
	tail := st.LastAcceptedAt.Sub(s.trade.end)
	fmt.Printf("      extsim accepted %d of %d filled, warm-up included (+%d pending); last %v after the load ended; %+v\n",
		delivered, want, s.trade.res.Pending, tail.Round(time.Millisecond), st)
	return relayFigures(st, delivered, s.trade, span, max(tail, 0)), nil
}

// waitRelayDrain polls extsim until accepted reaches want, stops rising for relayStallS, or
// relayDrainTimeoutS passes.
func waitRelayDrain(ctx context.Context, base string, want int64) (extsimStats, error) {
	deadline := time.Now().Add(relayDrainTimeoutS * time.Second)
	var last extsimStats
	lastChange := time.Now()
	for {
		st, err := getExtsimStats(ctx, base)
		if err != nil {
			return st, err
		}
		if st.Accepted != last.Accepted {
			lastChange = time.Now()
		}
		last = st
		if st.Accepted >= want || time.Since(lastChange) > relayStallS*time.Second || time.Now().After(deadline) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(relayPollMs * time.Millisecond):
		}
	}
}

func relayFigures(st extsimStats, delivered int64, t tradeOutcome, span, tail time.Duration) []figure {
	integrity := "must be 0"
	r := t.res
	return []figure{
		{Name: "relay → extsim executions delivered", Value: strconv.FormatInt(delivered, 10), Unit: "executions",
			Note: fmt.Sprintf("of %d filled (%d in the warm-up) + %d pending (202) orders, plus orders still in flight when the load stopped; extsim held open; nothing may be lost",
				r.Filled+t.warmupFilled, t.warmupFilled, r.Pending)},
		{Name: "relay → extsim delivery rate", Value: f0(float64(delivered) / span.Seconds()), Unit: "executions/s",
			Note: "first to last accepted delivery, concurrent with the order load"},
		{Name: "relay → extsim last delivery after load end", Value: ms(tail), Unit: "ms", Note: "how far the relay trailed the orders (0: it kept up)"},
		{Name: "relay → extsim duplicates", Value: strconv.FormatInt(st.Duplicates, 10), Unit: "deliveries", Note: integrity + " (idempotency key seen before)"},
		{Name: "relay → extsim gaps", Value: strconv.FormatInt(st.Gaps, 10), Unit: "gaps",
			Note: fmt.Sprintf("%s (per-account sequence); reorders %d, seq conflicts %d", integrity, st.Reorders, st.SeqConflicts)},
		{Name: "relay → extsim bad signatures", Value: strconv.FormatInt(st.BadSignatures, 10), Unit: "deliveries",
			Note: fmt.Sprintf("%s; malformed %d", integrity, st.Malformed)},
	}
}

var pgbenchTPS = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)

// measurePgbench runs pgbench's TPC-B-like load against the dev's PostgreSQL, in a database of its
// own, as the ceiling the order path's transactions compare with.
func measurePgbench(ctx context.Context, s *systemRun) ([]figure, error) {
	name := "pgbench TPC-B-like on kawase dev's PostgreSQL"
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		bin = pgbenchPath
	}
	if _, err := os.Stat(bin); err != nil {
		return []figure{{Name: name, Value: "skipped", Unit: "tps", Note: "pgbench not installed (Debian postgresql-client)"}}, nil
	}
	dbURL, err := createBenchDatabase(ctx, s.dev.state.Database)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, pgbenchTimeoutS*time.Second)
	defer cancel()
	if _, err := runPgbench(ctx, bin, "-i", "-q", "-s", pgbenchScale, dbURL); err != nil {
		return nil, err
	}
	out, err := runPgbench(ctx, bin, "-c", pgbenchClients, "-j", pgbenchThreads, "-T", strconv.Itoa(pgbenchDurationS), "-M", "prepared", dbURL)
	if err != nil {
		return nil, err
	}
	m := pgbenchTPS.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("pgbench printed no tps line:\n%s", out)
	}
	fmt.Printf("      pgbench: tps = %s\n", m[1])
	tps, _ := strconv.ParseFloat(m[1], 64)
	return []figure{{Name: name, Value: f0(tps), Unit: "tps", Note: fmt.Sprintf("scale %s, %s clients, %s threads, %d s, prepared; same server as the order load",
		pgbenchScale, pgbenchClients, pgbenchThreads, pgbenchDurationS)}}, nil
}

// createBenchDatabase creates pgbenchDatabase next to the dev's database and returns its URL.
func createBenchDatabase(ctx context.Context, devURL string) (string, error) {
	u, err := url.Parse(devURL)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	conn, err := pgx.Connect(ctx, devURL)
	if err != nil {
		return "", fmt.Errorf("connect to dev database: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgbenchDatabase); err != nil {
		return "", fmt.Errorf("create database %s: %w", pgbenchDatabase, err)
	}
	u.Path = "/" + pgbenchDatabase
	return u.String(), nil
}

func runPgbench(ctx context.Context, bin string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pgbench %s: %w\n%s", args[0], err, out)
	}
	return string(out), nil
}
