package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/kawase-fx/kawase/functions/rates/loadtest"
)

// Sizes of the system scenario's rates measurements.
const (
	ratesLoadClients      = 64
	ratesLoadDurationS    = 10
	ratesGoalReqPerSec    = 20_000
	streamClients         = 5_000
	streamFallbackClients = 1_000
	streamDurationS       = 15
	streamGoalLagP99Ms    = 100
	// streamSpareFiles is what the bench keeps free of its open-files limit besides the streams.
	streamSpareFiles    = 256
	freshnessMetric     = "kawase_rates_freshness_seconds"
	freshnessGoalMs     = 20
	streamDroppedMetric = "kawase_rates_stream_dropped_total"
)

// measureRatesGet drives GET /v1/rates of the dev's HTTP listener, then a bare net/http server on
// loopback answering the same bytes, with the same keep-alive clients, and reports both: in a closed
// loop (the most each answers, and their ratio) and in an open loop at the goal's rate (the latency
// while sustaining it); first asking for gzip as browsers do, then for the uncompressed body.
func measureRatesGet(ctx context.Context, s *systemRun) ([]figure, error) {
	var figs []figure
	for _, enc := range []struct{ acceptEncoding, label string }{{"gzip", "gzip"}, {"", "identity"}} {
		f, err := measureRatesGetEncoding(ctx, s, enc.acceptEncoding, enc.label)
		if err != nil {
			return figs, err
		}
		figs = append(figs, f...)
	}
	return figs, nil
}

// ratesLoadRounds is how many alternating rounds of kawase and the bare server make one measurement,
// so a change in the machine's other load during the run affects both alike.
const ratesLoadRounds = 4

// ratesLoadRound is how long each round drives one server.
const ratesLoadRound = ratesLoadDurationS * time.Second / ratesLoadRounds

// openLoopMissedMaxPercent: an open loop that leaves more than this share of its due requests
// unanswered did not sustain its rate. A server that keeps up leaves only those in flight at the
// end, a few dozen of a round's tens of thousands.
const openLoopMissedMaxPercent = 1

func measureRatesGetEncoding(ctx context.Context, s *systemRun, acceptEncoding, label string) ([]figure, error) {
	url := s.dev.state.HTTP + "/v1/rates"
	body, contentEncoding, err := boardBytes(ctx, url, acceptEncoding)
	if err != nil {
		return nil, err
	}
	bareURL, stopBare, err := startBare(ctx, body, contentEncoding)
	if err != nil {
		return nil, fmt.Errorf("bare net/http: %w", err)
	}
	defer stopBare()
	what := "kawase GET /v1/rates, " + label
	closed, err := alternateRounds(ctx, s, url, bareURL, acceptEncoding, 0)
	if err != nil {
		return nil, err
	}
	note := fmt.Sprintf("the most it answers: closed loop, %d keep-alive clients each sending its next request when answered, %d rounds of %v alternating with the bare server, %d-byte answers, wrk-like load generator (raw HTTP/1.1) on the same cores; latency: worst round",
		ratesLoadClients, ratesLoadRounds, ratesLoadRound, len(body))
	figs := closed[0].figures(what, note)
	figs = append(figs, closed[1].figures("bare net/http, same "+label+" bytes", "in a process of its own, as kawase is: what serving fixed bytes costs on this machine under the same load")...)
	figs = append(figs, figure{Name: what + " ÷ bare net/http", Value: strconv.FormatFloat(closed[0].perSec()/closed[1].perSec(), 'f', 2, 64),
		Unit: "ratio", Note: "goal ≥ 0.8; 1.00 = no overhead over serving fixed bytes"})
	open, err := alternateRounds(ctx, s, url, bareURL, acceptEncoding, ratesGoalReqPerSec)
	if err != nil {
		return nil, err
	}
	note = fmt.Sprintf("goal: sustains %d req/s with p99 < 10 ms; open loop (as wrk2): %d req/s offered over %d clients, each request's latency counted from when it was due, so waiting for a free client counts too, and so does the generator's own lateness in waking up; %d rounds of %v alternating with the bare server; latency: worst round",
		ratesGoalReqPerSec, ratesGoalReqPerSec, ratesLoadClients, ratesLoadRounds, ratesLoadRound)
	at := fmt.Sprintf(" at %d req/s offered", ratesGoalReqPerSec)
	figs = append(figs, open[0].figures(what+at, note)...)
	return append(figs, open[1].figures("bare net/http, same "+label+" bytes"+at, "the same open loop")...), nil
}

// alternateRounds drives kawase's url and the bare server's in alternating rounds, so a change in the
// machine's other load during the run affects both alike, and returns kawase's rounds then the bare
// server's. offeredPerSec 0 is a closed loop. In an open loop it also adds the freshness kawase
// observed during its own rounds to s.freshAtGoal.
func alternateRounds(ctx context.Context, s *systemRun, url, bareURL, acceptEncoding string, offeredPerSec float64) ([2]rounds, error) {
	var r [2]rounds
	servers := [2]struct {
		name, url string
		isKawase  bool
	}{{"kawase", url, true}, {"bare net/http", bareURL, false}}
	for range ratesLoadRounds {
		for i, srv := range servers {
			watch := srv.isKawase && offeredPerSec > 0
			var before histogram
			if watch {
				m, err := scrapeMetrics(ctx, s.dev.state.HTTP)
				if err != nil {
					return r, err
				}
				before = histogramOf(m, freshnessMetric)
			}
			res, err := getLoad(ctx, srv.url, acceptEncoding, ratesLoadRound, offeredPerSec)
			if err != nil {
				return r, fmt.Errorf("%s: %w", srv.name, err)
			}
			r[i].add(res)
			if watch {
				m, err := scrapeMetrics(ctx, s.dev.state.HTTP)
				if err != nil {
					return r, err
				}
				s.freshAtGoal = s.freshAtGoal.plus(histogramOf(m, freshnessMetric).minus(before))
			}
		}
	}
	return r, nil
}

// rounds adds up the rounds of one server's load.
type rounds struct {
	requests, errors int64
	missed           int64 // an open loop's requests due but not answered
	elapsed          time.Duration
	p50, p99         time.Duration // the worst round's
}

func (r *rounds) add(res loadtest.Result) {
	r.requests += res.Requests
	r.errors += res.Errors
	r.missed += res.Missed
	r.elapsed += res.Elapsed
	r.p50, r.p99 = max(r.p50, res.P50), max(r.p99, res.P99)
}

func (r *rounds) perSec() float64 { return float64(r.requests) / max(r.elapsed.Seconds(), 1e-9) }

func (r *rounds) figures(what, note string) []figure {
	if r.errors > 0 {
		note += fmt.Sprintf("; %d of %d requests failed", r.errors, r.requests)
	}
	if r.missed*100 > (r.requests+r.missed)*openLoopMissedMaxPercent {
		note += fmt.Sprintf("; NOT sustained: %d requests fell due and were not answered", r.missed)
	}
	return []figure{
		{Name: what + " throughput", Value: f0(r.perSec()), Unit: "req/s", Note: note},
		{Name: what + " latency p50", Value: ms(r.p50), Unit: "ms"},
		{Name: what + " latency p99", Value: ms(r.p99), Unit: "ms"},
	}
}

// boardBytes fetches the board as the load will, without decompressing it, and returns it with its
// Content-Encoding.
func boardBytes(ctx context.Context, url, acceptEncoding string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, devHTTPTimeoutS*time.Second)
	defer cancel()
	return loadtest.Fetch(ctx, url, acceptEncoding)
}

func getLoad(ctx context.Context, url, acceptEncoding string, d time.Duration, offeredPerSec float64) (loadtest.Result, error) {
	res, err := loadtest.Run(ctx, loadtest.Options{URL: url, Concurrency: ratesLoadClients, Duration: d,
		Wire: true, AcceptEncoding: acceptEncoding, OfferedPerSec: offeredPerSec})
	if err != nil {
		return res, err
	}
	fmt.Printf("      %s (Accept-Encoding %q): %v\n", url, acceptEncoding, res)
	return res, nil
}

// measureStream holds streamClients SSE clients on /v1/rates/stream (fewer when the open-files limit
// cannot hold them, or after a failed attempt) and reports update lag and dropped clients.
func measureStream(ctx context.Context, s *systemRun) ([]figure, error) {
	clients, note := streamClientCount()
	before, err := scrapeMetrics(ctx, s.dev.state.HTTP)
	if err != nil {
		return nil, err
	}
	res, err := streamLoad(ctx, s.dev.state.HTTP, clients)
	if err != nil && clients > streamFallbackClients {
		fmt.Printf("      %d streams failed (%v); retrying with %d\n", clients, err, streamFallbackClients)
		note += fmt.Sprintf("%d streams failed (%v), fell back to %d; ", clients, err, streamFallbackClients)
		res, err = streamLoad(ctx, s.dev.state.HTTP, streamFallbackClients)
	}
	if err != nil {
		return nil, err
	}
	after, err := scrapeMetrics(ctx, s.dev.state.HTTP)
	if err != nil {
		return nil, err
	}
	dropped := after[streamDroppedMetric] - before[streamDroppedMetric]
	return streamFigures(res, note, dropped), nil
}

// streamClientCount is streamClients, or what the open-files limit allows, with a note when fewer.
func streamClientCount() (int, string) {
	limit := openFileLimit()
	if limit >= streamClients+streamSpareFiles {
		return streamClients, ""
	}
	n := int(limit) - streamSpareFiles
	return max(n, 1), fmt.Sprintf("open-files limit %d allows only %d of %d streams; ", limit, n, streamClients)
}

func streamLoad(ctx context.Context, base string, clients int) (loadtest.StreamResult, error) {
	res, err := loadtest.Stream(ctx, loadtest.StreamOptions{URL: base + "/v1/rates/stream", Clients: clients,
		Duration: streamDurationS * time.Second})
	if err == nil {
		fmt.Printf("      %v (connected in %v)\n", res, res.ConnectTime.Round(time.Millisecond))
	}
	return res, err
}

func streamFigures(r loadtest.StreamResult, note string, dropped float64) []figure {
	what := fmt.Sprintf("SSE /v1/rates/stream, %d clients", r.Clients)
	return []figure{
		{Name: what + ": connected", Value: strconv.Itoa(r.Connected), Unit: "clients",
			Note: note + fmt.Sprintf("snapshot reached all connected clients in %v; held %d s", r.ConnectTime.Round(time.Millisecond), streamDurationS)},
		{Name: what + ": update lag p50", Value: ms(r.LagP50), Unit: "ms", Note: "server emit → client has read the whole batch"},
		{Name: what + ": update lag p99", Value: ms(r.LagP99), Unit: "ms", Note: fmt.Sprintf("goal p99 < %d ms after conflation; max %v; %d updates read",
			streamGoalLagP99Ms, r.LagMax.Round(time.Millisecond), r.Updates)},
		{Name: what + ": rate age p99", Value: ms(r.AgeP99), Unit: "ms", Note: "provider time of the rate → client (p50 " + ms(r.AgeP50) + " ms)"},
		{Name: what + ": streams ended early", Value: strconv.Itoa(r.Ended), Unit: "clients", Note: "client side: stream closed or failed before the end"},
		{Name: what + ": dropped by server", Value: f0(dropped), Unit: "clients", Note: streamDroppedMetric + " during the run (slow consumers cut off)"},
	}
}

// freshnessIdleS is how long freshness is measured with nothing but the rates flowing.
const freshnessIdleS = 15

// measureFreshnessIdle reports freshness over freshnessIdleS seconds in which the system only
// carries its 1,000 rates/s: the path's own latency, without a load generator competing for the
// same cores.
func measureFreshnessIdle(ctx context.Context, s *systemRun) ([]figure, error) {
	groups, err := devCPUGroups(s.dev)
	if err != nil {
		return nil, err
	}
	cpuBefore, err := sampleCPU(groups)
	if err != nil {
		return nil, err
	}
	before, err := scrapeMetrics(ctx, s.dev.state.HTTP)
	if err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(freshnessIdleS * time.Second):
	}
	after, err := scrapeMetrics(ctx, s.dev.state.HTTP)
	if err != nil {
		return nil, err
	}
	cpuAfter, err := sampleCPU(groups)
	if err != nil {
		return nil, err
	}
	h := histogramOf(after, freshnessMetric).minus(histogramOf(before, freshnessMetric))
	figs, err := freshnessFigures("rate freshness, no other load", h,
		fmt.Sprintf("%d s with only the rates flowing", freshnessIdleS))
	// What the steady rates cost is what every other whole-system figure is measured beside.
	return append(figs, cpuFigures("CPU with only the rates flowing", groups, cpuBefore, cpuAfter)...), err
}

// scrapeFreshnessBefore records the freshness histogram before the rates loads.
func scrapeFreshnessBefore(ctx context.Context, s *systemRun) ([]figure, error) {
	m, err := scrapeMetrics(ctx, s.dev.state.HTTP)
	if err != nil {
		return nil, err
	}
	s.freshBefore = histogramOf(m, freshnessMetric)
	return nil, nil
}

// measureFreshnessAtGoal reports the freshness kawase observed while it answered GET /v1/rates at
// the goal's rate (its open-loop rounds, gzip and identity; not the bare server's, nor the closed
// loops that drive it past the goal until its cores are saturated).
func measureFreshnessAtGoal(_ context.Context, s *systemRun) ([]figure, error) {
	return freshnessFigures(fmt.Sprintf("rate freshness while kawase answers %d GET/s", ratesGoalReqPerSec), s.freshAtGoal,
		fmt.Sprintf("summed over kawase's open-loop rounds at %d req/s offered, the load generator on the same cores", ratesGoalReqPerSec))
}

// measureFreshness reports the freshness histogram's growth during the rates loads: from the feeder's
// receipt of a rate to its publication in the rates snapshot.
func measureFreshness(ctx context.Context, s *systemRun) ([]figure, error) {
	m, err := scrapeMetrics(ctx, s.dev.state.HTTP)
	if err != nil {
		return nil, err
	}
	h := histogramOf(m, freshnessMetric).minus(s.freshBefore)
	return freshnessFigures("rate freshness during all the GET and SSE loads", h,
		"the closed loops that saturate the cores included, the load generator on the same cores")
}

// freshnessFigures reports h, a freshness histogram's growth over a measurement, as average, p50
// and p99.
func freshnessFigures(what string, h histogram, during string) ([]figure, error) {
	if h.count == 0 {
		return nil, fmt.Errorf("%s: no observations (%s)", freshnessMetric, during)
	}
	note := fmt.Sprintf("feeder receipt → snapshot; %s over %.0f rates, %s (bucket-interpolated); goal p99 < %d ms",
		freshnessMetric, h.count, during, freshnessGoalMs)
	figs := []figure{
		{Name: what + ": average", Value: f1(h.sum / h.count * 1000), Unit: "ms", Note: note},
		{Name: what + ": p50", Value: f1(h.quantile(0.5) * 1000), Unit: "ms"},
		{Name: what + ": p99", Value: f1(h.quantile(0.99) * 1000), Unit: "ms"},
	}
	if share, ok := h.shareAtMost(freshnessGoalMs / 1000.0); ok {
		figs = append(figs, figure{Name: fmt.Sprintf("%s: within %d ms", what, freshnessGoalMs), Value: f2(share * 100), Unit: "%",
			Note: "read off the histogram's bucket that ends at the goal; p99 < the goal means at least 99%"})
	}
	return figs, nil
}
