package rates_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/functions/rates"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// lastTicksStub stands in for the ratekeeper's GetLastTicks: it fails the first failFirst calls, then
// answers with the ticks it holds for the pairs asked for, and records every request.
type lastTicksStub struct {
	ratesv1.UnimplementedCandleServiceServer
	mu        sync.Mutex
	failFirst int
	ticks     map[string]*ratesv1.Tick
	// extra is added to every answer, asked for or not.
	extra *ratesv1.Tick
	asked [][]string
}

func (s *lastTicksStub) GetLastTicks(_ context.Context, req *ratesv1.GetLastTicksRequest) (*ratesv1.GetLastTicksResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, req.GetPairs())
	if len(s.asked) <= s.failFirst {
		return nil, status.Error(codes.Unavailable, "stub: the ratekeeper is starting")
	}
	resp := &ratesv1.GetLastTicksResponse{}
	for _, p := range req.GetPairs() {
		if t, ok := s.ticks[p]; ok {
			resp.Ticks = append(resp.Ticks, t)
		}
	}
	if s.extra != nil {
		resp.Ticks = append(resp.Ticks, s.extra)
	}
	return resp, nil
}

func (s *lastTicksStub) requests() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.asked)
}

// TestColdStartSeedsQuietPairs starts a replica whose tail of the topic lacks two pairs: AUD_USD has
// been quiet for an hour (the ratekeeper holds its last rate) and GBP_JPY has never had a rate. The
// replica stays unready while the ratekeeper cannot answer, then takes AUD_USD's last rate, served
// but not tradeable, with the ratekeeper's epoch fence, refuses a tick it did not ask for, becomes
// ready without GBP_JPY, and lets later rates off the topic win.
func TestColdStartSeedsQuietPairs(t *testing.T) {
	stub := &lastTicksStub{failFirst: 2}
	conn := serveGRPC(t, func(s *grpc.Server) { ratesv1.RegisterCandleServiceServer(s, stub) })
	pairs := append(slices.Clone(apiPairs), "EUR_JPY")
	env := newRatesEnv(t, rates.Config{Pairs: pairs, BackfillRecords: 5, StaleAfter: 5 * time.Second},
		ratesv1.NewCandleServiceClient(conn))
	hourAgo := env.clock.Now().Add(-time.Hour)
	stub.ticks = map[string]*ratesv1.Tick{"AUD_USD": {Pair: "AUD_USD", Bid: "0.65912", Ask: "0.65914",
		Time: timestamppb.New(quote("AUD_USD", 2, 1).ProviderTime), QuoteId: "2", Epoch: 1, EpochSeen: 2,
		ReceivedAt: timestamppb.New(hourAgo)},
		// Quoted just now by its provider time, but when it was received is unknown: never tradeable.
		"EUR_JPY": {Pair: "EUR_JPY", Bid: "162.500", Ask: "162.510", Time: timestamppb.New(env.clock.Now()), QuoteId: "5", Epoch: 1}}
	// An answer that also holds a pair not asked for (served, and newer than the tail's): refused.
	stub.extra = &ratesv1.Tick{Pair: "USD_JPY", Bid: "151.999", Ask: "152.001", Time: timestamppb.New(quote("USD_JPY", 99, 1).ProviderTime),
		QuoteId: "99", Epoch: 1, EpochSeen: 1, ReceivedAt: timestamppb.New(env.clock.Now())}
	for i := 1; i <= 10; i++ {
		env.publish(t, quote("USD_JPY", i, 1), quote("EUR_USD", i, 1))
	}
	env.start(t)

	eventually(t, "two failed calls to the ratekeeper", func() bool { return len(stub.requests()) >= 2 })
	if err := env.svc.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "AUD_USD") {
		t.Fatalf("ready before the ratekeeper answered: %v", err)
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	for _, asked := range stub.requests() {
		mustf(t, slices.Equal(asked, []string{"GBP_JPY", "AUD_USD", "EUR_JPY"}), "asked the ratekeeper for %v, want the pairs missing", asked)
	}
	mustf(t, metricValue(t, env.reg, "kawase_rates_seed_errors_total", nil) == 2, "seed errors not counted")
	mustf(t, metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "seeded"}) == 2, "seeded rates not counted")
	mustf(t, metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "seed_refused"}) == 1,
		"the tick not asked for was not refused")
	mustf(t, decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Bid == "151.430", "USD_JPY taken from a tick not asked for")

	aud := decodeRate(t, get(t, env.srv.URL+"/v1/rates/AUD_USD").body)
	mustf(t, aud == rateBody{Pair: "AUD_USD", Bid: "0.65912", Ask: "0.65914", Spread: "0.00002",
		Time: "2026-01-05T09:00:02.000Z", Tradeable: false}, "AUD_USD from the ratekeeper: %+v", aud)
	eurjpy := decodeRate(t, get(t, env.srv.URL+"/v1/rates/EUR_JPY").body)
	mustf(t, eurjpy.Bid == "162.500" && !eurjpy.Tradeable, "EUR_JPY, received when unknown: %+v", eurjpy)
	if r := get(t, env.srv.URL+"/v1/rates/GBP_JPY"); r.status != http.StatusServiceUnavailable || problemCode(r) != "rate_unavailable" {
		t.Fatalf("GBP_JPY, never quoted: %d %s", r.status, r.body)
	}
	mustf(t, len(decodeList(t, get(t, env.srv.URL+"/v1/rates").body)) == 4, "GET /v1/rates lists the four pairs with a rate")

	// The topic's own rates: an older AUD_USD quote loses to the seeded one, and so does a newer one of
	// an epoch older than the ratekeeper has seen; a newer one of that epoch wins.
	env.publish(t, quote("AUD_USD", 1, 2), quote("AUD_USD", 4, 1), quote("AUD_USD", 3, 2), quote("GBP_JPY", 1, 1))
	eventually(t, "AUD_USD and GBP_JPY off the topic", func() bool {
		r := get(t, env.srv.URL+"/v1/rates")
		return strings.Contains(r.body, `"time":"2026-01-05T09:00:03.000Z","tradeable":true`) && strings.Contains(r.body, "GBP_JPY")
	})
	mustf(t, metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "duplicate"}) >= 1,
		"the quote older than the seeded one was not refused as a duplicate")
	mustf(t, metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "stale_epoch"}) == 1,
		"the quote of the fenced epoch was not refused")
	mustf(t, len(stub.requests()) == 3, "the ratekeeper was asked again after seeding: %v", stub.requests())
}
