package ratekeeper_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// TestRefusesInvalidRatesForDeadLetters sends events that can never be processed: each gets a
// non-retryable 4xx problem+json with a stable code and a reason, is counted, and leaves no trace.
func TestRefusesInvalidRatesForDeadLetters(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	base := time.Now().UTC().Add(-time.Minute)
	good := withEpoch(quote("USD_JPY", 1, base, time.Second), 1)
	tweak := func(f func(r *eventing.RateV1)) eventing.RateV1 {
		r := good
		f(&r)
		return r
	}
	cases := []struct {
		name string
		rate eventing.RateV1
		code string
	}{
		{"crossed", tweak(func(r *eventing.RateV1) { r.Bid, r.Ask = r.Ask, r.Bid }), "invalid_rate"},
		{"non-positive", tweak(func(r *eventing.RateV1) { r.Bid = decimal.Zero }), "invalid_rate"},
		{"negative", tweak(func(r *eventing.RateV1) { r.Bid = decimal.RequireFromString("-1.000") }), "invalid_rate"},
		{"precision", tweak(func(r *eventing.RateV1) { r.Bid = decimal.RequireFromString("151.4201") }), "invalid_rate"},
		{"unknown pair", tweak(func(r *eventing.RateV1) { r.Pair = "XAU_JPY" }), "invalid_rate"},
		{"no epoch", tweak(func(r *eventing.RateV1) { r.Epoch = 0 }), "invalid_rate"},
		{"future", tweak(func(r *eventing.RateV1) { r.ProviderTime = time.Now().Add(time.Hour) }), "rate_out_of_range"},
		{"ancient", tweak(func(r *eventing.RateV1) { r.ProviderTime = time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC) }), "rate_out_of_range"},
		{"off band", tweak(func(r *eventing.RateV1) {
			r.Bid, r.Ask = decimal.RequireFromString("9999.000"), decimal.RequireFromString("9999.010")
		}), "rate_out_of_range"},
	}
	for _, c := range cases {
		// Events are built by hand: eventing.NewEvent refuses invalid payloads.
		e := rateEvent(t, good)
		if err := e.SetData(eventing.ContentTypeJSON, c.rate); err != nil {
			t.Fatal(err)
		}
		d, err := deliver(context.Background(), http.DefaultClient, env.srv.URL, e)
		if err != nil {
			t.Fatal(err)
		}
		if d.status != http.StatusUnprocessableEntity || d.code != c.code || !strings.Contains(d.body, `"detail"`) {
			t.Errorf("%s: got %d %s, want 422 %s", c.name, d.status, d.body, c.code)
		}
	}
	wrongType := rateEvent(t, good)
	wrongType.SetType(eventing.TypeOrderCommand)
	if d, _ := deliver(context.Background(), http.DefaultClient, env.srv.URL, wrongType); d.status != 422 || d.code != "unknown_event_type" {
		t.Errorf("wrong type: got %d %s", d.status, d.body)
	}
	notCE, _ := http.NewRequest(http.MethodPost, env.srv.URL, strings.NewReader(`{"hello":1}`))
	notCE.Header.Set("Content-Type", "application/json")
	if d, _ := do(http.DefaultClient, notCE); d.status != 400 || d.code != "invalid_cloudevent" {
		t.Errorf("not a cloudevent: got %d %s", d.status, d.body)
	}
	req, _ := http.NewRequest(http.MethodPost, env.srv.URL, bytes.NewReader(bytes.Repeat([]byte("x"), 100<<10)))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	if d, _ := do(http.DefaultClient, req); d.status != http.StatusRequestEntityTooLarge || d.code != "event_too_large" {
		t.Errorf("huge event: got %d %s", d.status, d.body)
	}
	want := float64(len(cases) + 3)
	mustf(t, counter(t, env.reg, ratekeeper.OutcomeInvalid) == want, "invalid counter %v, want %v",
		counter(t, env.reg, ratekeeper.OutcomeInvalid), want)
	for code, n := range map[string]float64{"invalid_rate": 6, "rate_out_of_range": 3, "unknown_event_type": 1,
		"invalid_cloudevent": 1, "event_too_large": 1} {
		got, err := metrictest.Value(env.reg, "kawase_ratekeeper_refused_total", map[string]string{"code": code})
		mustf(t, err == nil && got == n, "refused %s: %v (%v), want %v", code, got, err, n)
	}
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.ticks`) == 0, "an invalid rate left a tick")
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.marks`) == 0, "an invalid rate left a mark")
}

// TestOutcomesOfOneDeliveryEach walks one pair through every outcome, one delivery at a time.
func TestOutcomesOfOneDeliveryEach(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	base := time.Now().UTC().Add(-time.Minute)
	steps := []struct {
		rate eventing.RateV1
		want ratekeeper.Outcome
	}{
		{withEpoch(quote("EUR_USD", 1, base, time.Second), 2), ratekeeper.OutcomeAccepted},
		{withEpoch(quote("EUR_USD", 1, base, time.Second), 2), ratekeeper.OutcomeDuplicate},  // redelivery
		{withEpoch(quote("EUR_USD", 0, base, time.Second), 2), ratekeeper.OutcomeDuplicate},  // older quote
		{withEpoch(quote("EUR_USD", 2, base, time.Second), 1), ratekeeper.OutcomeStaleEpoch}, // stale leader
		{withEpoch(quote("EUR_USD", 2, base, time.Second), 2), ratekeeper.OutcomeAccepted},
		{withEpoch(quote("EUR_USD", 3, base, time.Second), 3), ratekeeper.OutcomeAccepted}, // next leader
		{withEpoch(quote("EUR_USD", 4, base, time.Second), 2), ratekeeper.OutcomeStaleEpoch},
	}
	// Same provider time, higher quote id: newer.
	sameTime := withEpoch(quote("EUR_USD", 3, base, time.Second), 3)
	sameTime.QuoteID = "1004"
	steps = append(steps, struct {
		rate eventing.RateV1
		want ratekeeper.Outcome
	}{sameTime, ratekeeper.OutcomeAccepted})
	for i, s := range steps {
		d := mustDeliver(t, env.srv.URL, s.rate)
		if d.status != http.StatusOK || d.outcome != string(s.want) {
			t.Fatalf("step %d: got %d %s, want 200 %s", i, d.status, d.body, s.want)
		}
	}
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.ticks`) == 4, "want 4 ticks")
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM public.effects`) == 4, "want 4 trigger effects")
	mustf(t, queryInt(t, env.pool, `SELECT epoch FROM ratekeeper.marks WHERE pair = 'EUR_USD'`) == 3, "mark epoch")
}

// TestDatabaseDownIsRetryable: a delivery the database cannot commit gets 503 (Knative retries it).
func TestDatabaseDownIsRetryable(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	env.pool.Close()
	d := mustDeliver(t, env.srv.URL, withEpoch(quote("USD_JPY", 1, time.Now().Add(-time.Minute), time.Second), 1))
	if d.status != http.StatusServiceUnavailable || d.code != "store_unavailable" {
		t.Fatalf("got %d %s, want 503 store_unavailable", d.status, d.body)
	}
}

// TestCandlesOverGRPC serves candles over a real gRPC listener and checks OHLC, volume, order,
// completeness and argument errors.
func TestCandlesOverGRPC(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Minute)
	env := startKeeper(t, ratekeeper.Config{Now: func() time.Time { return now.Add(30 * time.Second) }})
	// Three minutes of USD_JPY at 20 s steps: quotes 0-2 in minute -3, 3-5 in -2, 6-8 in -1, 9 in the current.
	base := now.Add(-3 * time.Minute)
	var bids []decimal.Decimal
	for i := range 10 {
		r := withEpoch(quote("USD_JPY", i, base, 20*time.Second), 1)
		bids = append(bids, r.Bid)
		if d := mustDeliver(t, env.srv.URL, r); d.outcome != "accepted" {
			t.Fatalf("quote %d: %s", i, d.body)
		}
	}
	client := candleClient(t, env.keeper)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	resp, err := client.GetCandles(ctx, &ratesv1.GetCandlesRequest{Pair: "USD_JPY",
		Granularity: ratesv1.Granularity_GRANULARITY_M1, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	mustf(t, len(resp.Candles) == 3, "got %d candles, want 3", len(resp.Candles))
	for i, c := range resp.Candles {
		first := 3 * (i + 1) // the latest three candles: minutes -2, -1 and the current one
		want := bids[first:min(first+3, len(bids))]
		mustf(t, c.Time.AsTime().Equal(base.Add(time.Duration(i+1)*time.Minute)), "candle %d at %v", i, c.Time.AsTime())
		mustf(t, c.Volume == int64(len(want)), "candle %d volume %d, want %d", i, c.Volume, len(want))
		hi, lo := decimal.Max(want[0], want[1:]...), decimal.Min(want[0], want[1:]...)
		got := []string{c.Bid.Open, c.Bid.High, c.Bid.Low, c.Bid.Close}
		exp := []string{want[0].StringFixed(3), hi.StringFixed(3), lo.StringFixed(3), want[len(want)-1].StringFixed(3)}
		mustf(t, strings.Join(got, " ") == strings.Join(exp, " "), "candle %d bid %v, want %v", i, got, exp)
		mustf(t, c.Complete == (i < 2), "candle %d complete=%v", i, c.Complete)
	}
	for _, bad := range []*ratesv1.GetCandlesRequest{
		{Pair: "XXX_YYY", Granularity: ratesv1.Granularity_GRANULARITY_M1, Count: 1},
		{Pair: "USD_JPY", Granularity: ratesv1.Granularity_GRANULARITY_UNSPECIFIED, Count: 1},
		{Pair: "USD_JPY", Granularity: ratesv1.Granularity_GRANULARITY_M1, Count: 0},
		{Pair: "USD_JPY", Granularity: ratesv1.Granularity_GRANULARITY_M1, Count: ratekeeper.CandleCountMax + 1},
	} {
		if _, err := client.GetCandles(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: got %v, want InvalidArgument", bad, err)
		}
	}
}

func candleClient(t *testing.T, k *ratekeeper.Keeper) ratesv1.CandleServiceClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	k.RegisterGRPC(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ratesv1.NewCandleServiceClient(conn)
}

// TestPruneKeepsMarks deletes expired ticks and S5 candles but keeps the marks, so a replay of the
// pruned quotes is still a duplicate, keeps each pair's open S5 candle, however old, since the
// wider candles do not hold it yet, and keeps each pair's last tick, however old, for GetLastTicks.
func TestPruneKeepsMarks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	env := startKeeper(t, ratekeeper.Config{})
	old := time.Now().UTC().Add(-72 * time.Hour).Truncate(time.Hour).Add(10 * time.Minute) // 3 quotes in one hour
	for i := range 3 {
		mustDeliver(t, env.srv.URL, withEpoch(quote("GBP_USD", i, old, time.Second), 1))
	}
	fresh := withEpoch(quote("GBP_USD", 0, time.Now().UTC().Add(-time.Minute), time.Second), 1)
	mustDeliver(t, env.srv.URL, fresh)
	mustDeliver(t, env.srv.URL, withEpoch(quote("EUR_USD", 0, old, time.Second), 1)) // its only, open, S5 candle
	k, err := ratekeeper.New(env.pool, nil, ratekeeper.Config{TickRetention: 48 * time.Hour}, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.PruneOnce(ctx); err != nil {
		t.Fatal(err)
	}
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.ticks WHERE pair = 'GBP_USD'`) == 1, "want only GBP_USD's fresh tick left")
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.ticks WHERE pair = 'EUR_USD'`) == 1,
		"want EUR_USD's last tick kept however old")
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.candles WHERE granularity = 'S5' AND pair = 'GBP_USD'`) == 1,
		"want one S5 candle of GBP_USD left")
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.candles WHERE granularity = 'S5' AND pair = 'EUR_USD'`) == 1,
		"want the open S5 candle of EUR_USD kept")
	client := candleClient(t, env.keeper)
	for pair, want := range map[string][]int64{"GBP_USD": {3, 1}, "EUR_USD": {1}} {
		resp, err := client.GetCandles(ctx, &ratesv1.GetCandlesRequest{Pair: pair, Granularity: ratesv1.Granularity_GRANULARITY_H1, Count: 10})
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, c := range resp.Candles {
			got = append(got, c.Volume)
		}
		mustf(t, slices.Equal(got, want), "%s H1 volumes %v after pruning, want %v", pair, got, want)
	}
	if d := mustDeliver(t, env.srv.URL, withEpoch(quote("GBP_USD", 1, old, time.Second), 1)); d.outcome != "duplicate" {
		t.Fatalf("replayed pruned quote: %s", d.body)
	}
}

// failOnceTrigger fails for the first rate it sees after writing its effect, like a trigger whose
// database work hits a transient error halfway.
type failOnceTrigger struct{ failed atomic.Bool }

func (f *failOnceTrigger) OnRate(ctx context.Context, q ratekeeper.Querier, r *eventing.RateV1) error {
	if err := (effectsTrigger{}).OnRate(ctx, q, r); err != nil {
		return err
	}
	if f.failed.CompareAndSwap(false, true) {
		return errors.New("transient trigger failure")
	}
	return nil
}

// TestTriggerFailureRollsBack: a failing trigger aborts the whole transaction — no tick, no mark, no
// effect — and the delivery is retryable; the retry then commits exactly once.
func TestTriggerFailureRollsBack(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	ctx := context.Background()
	trig := &failOnceTrigger{}
	k, err := ratekeeper.New(env.pool, trig, ratekeeper.Config{Writers: 1}, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = k.Run(runCtx) }()
	srv := httptest.NewServer(k.Handler())
	defer srv.Close()
	r := withEpoch(quote("USD_CHF", 1, time.Now().UTC().Add(-time.Minute), time.Second), 1)
	if d := mustDeliver(t, srv.URL, r); d.status != http.StatusServiceUnavailable || d.code != "store_unavailable" {
		t.Fatalf("failing trigger: %d %s", d.status, d.body)
	}
	for _, q := range []string{`SELECT count(*) FROM ratekeeper.ticks`, `SELECT count(*) FROM public.effects`,
		`SELECT count(*) FROM ratekeeper.candles`, `SELECT count(*) FROM ratekeeper.marks WHERE provider_ns IS NOT NULL`} {
		mustf(t, queryInt(t, env.pool, q) == 0, "%s: the failed batch left rows", q)
	}
	if d := mustDeliver(t, srv.URL, r); d.outcome != "accepted" {
		t.Fatalf("retry: %d %s", d.status, d.body)
	}
	if d := mustDeliver(t, srv.URL, r); d.outcome != "duplicate" {
		t.Fatalf("redelivery: %d %s", d.status, d.body)
	}
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM public.effects`) == 1, "want one effect")
	mustf(t, queryInt(t, env.pool, `SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'`) == 0,
		"a connection was left inside a transaction")
}

// TestMarksDeletedBehindItsBack: the keeper remembers which pairs have a mark row and skips creating
// them; should the rows go (an operator resetting the tick history), the batch fails as retryable once
// and the next delivery creates them again.
func TestMarksDeletedBehindItsBack(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	base := time.Now().UTC().Add(-time.Minute)
	if d := mustDeliver(t, env.srv.URL, withEpoch(quote("USD_JPY", 0, base, time.Second), 1)); d.outcome != "accepted" {
		t.Fatalf("first quote: %s", d.body)
	}
	if _, err := env.pool.Exec(context.Background(), `DELETE FROM ratekeeper.ticks; DELETE FROM ratekeeper.marks`); err != nil {
		t.Fatal(err)
	}
	next := withEpoch(quote("USD_JPY", 1, base, time.Second), 1)
	d := mustDeliver(t, env.srv.URL, next)
	mustf(t, d.status >= 500, "delivery while the mark is missing answered %d %s, want a retryable 5xx", d.status, d.body)
	d = mustDeliver(t, env.srv.URL, next)
	mustf(t, d.outcome == "accepted", "redelivery answered %d %s, want accepted", d.status, d.body)
}

// TestLastTicks serves each pair's last processed rate exactly as it was published (the provider time
// to the nanosecond), even after pruning has removed every other tick of a pair quiet for days, and
// leaves out a pair that never had a rate.
func TestLastTicks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	env := startKeeper(t, ratekeeper.Config{})
	old := time.Now().UTC().Add(-72 * time.Hour).Add(123456789 * time.Nanosecond)
	var lastJPY eventing.RateV1
	for i := range 5 {
		lastJPY = withEpoch(quote("USD_JPY", i, time.Now().UTC().Add(-time.Minute).Add(7*time.Nanosecond), time.Millisecond), 2)
		mustDeliver(t, env.srv.URL, lastJPY)
	}
	var lastEUR eventing.RateV1
	for i := range 3 {
		lastEUR = withEpoch(quote("EUR_USD", i, old, time.Second), 1)
		mustDeliver(t, env.srv.URL, lastEUR)
	}
	k, err := ratekeeper.New(env.pool, nil, ratekeeper.Config{TickRetention: 48 * time.Hour}, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.PruneOnce(ctx); err != nil {
		t.Fatal(err)
	}
	client := candleClient(t, env.keeper)
	resp, err := client.GetLastTicks(ctx, &ratesv1.GetLastTicksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	mustf(t, len(resp.Ticks) == 2, "got %d ticks, want EUR_USD and USD_JPY", len(resp.Ticks))
	for i, want := range []eventing.RateV1{lastEUR, lastJPY} {
		got := resp.Ticks[i]
		spec, _ := fx.Lookup(want.Pair)
		mustf(t, got.Pair == string(want.Pair) && got.Bid == spec.FormatPrice(want.Bid) && got.Ask == spec.FormatPrice(want.Ask),
			"tick %d: %v, want %s %s %s", i, got, want.Pair, want.Bid, want.Ask)
		mustf(t, got.Time.AsTime().Equal(want.ProviderTime), "%s time %v, want %v", want.Pair, got.Time.AsTime(), want.ProviderTime)
		mustf(t, got.QuoteId == want.QuoteID && got.Epoch == want.Epoch, "%s quote %s epoch %d", want.Pair, got.QuoteId, got.Epoch)
		mustf(t, got.ReceivedAt != nil && got.ReceivedAt.AsTime().Sub(want.ReceivedAt).Abs() < time.Microsecond,
			"%s received at %v, want %v", want.Pair, got.ReceivedAt, want.ReceivedAt)
	}
	mustf(t, resp.Ticks[0].EpochSeen == 1 && resp.Ticks[1].EpochSeen == 2, "epochs seen %d, %d", resp.Ticks[0].EpochSeen, resp.Ticks[1].EpochSeen)
	mustf(t, len(resp.PairsWithoutTick) == 0, "pairs without tick: %v", resp.PairsWithoutTick)
	one, err := client.GetLastTicks(ctx, &ratesv1.GetLastTicksRequest{Pairs: []string{"EUR_USD", "GBP_USD"}})
	if err != nil {
		t.Fatal(err)
	}
	mustf(t, len(one.Ticks) == 1 && one.Ticks[0].Pair == "EUR_USD", "EUR_USD and the never-quoted GBP_USD: %v", one.Ticks)
	// A later epoch fenced USD_JPY's feeder, and EUR_USD's last tick was deleted by a prune from before
	// prune kept it: USD_JPY says so, EUR_USD is a pair quoted but without a tick.
	if _, err := env.pool.Exec(ctx, `UPDATE ratekeeper.marks SET epoch = 5 WHERE pair = 'USD_JPY'`); err != nil {
		t.Fatal(err)
	}
	if _, err := env.pool.Exec(ctx, `DELETE FROM ratekeeper.ticks WHERE pair = 'EUR_USD'`); err != nil {
		t.Fatal(err)
	}
	after, err := client.GetLastTicks(ctx, &ratesv1.GetLastTicksRequest{Pairs: []string{"EUR_USD", "GBP_USD", "USD_JPY"}})
	if err != nil {
		t.Fatal(err)
	}
	mustf(t, len(after.Ticks) == 1 && after.Ticks[0].Pair == "USD_JPY" && after.Ticks[0].Epoch == 2 && after.Ticks[0].EpochSeen == 5,
		"after the fence and the lost tick: %v", after.Ticks)
	mustf(t, slices.Equal(after.PairsWithoutTick, []string{"EUR_USD"}), "pairs without tick: %v", after.PairsWithoutTick)
	tooMany := make([]string, 257)
	for i := range tooMany {
		tooMany[i] = "USD_JPY"
	}
	for _, bad := range [][]string{{"XXX_YYY"}, {"USD_JPY", "USD_JPY"}, tooMany} {
		if _, err := client.GetLastTicks(ctx, &ratesv1.GetLastTicksRequest{Pairs: bad}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%d pairs starting %s: got %v, want InvalidArgument", len(bad), bad[0], err)
		}
	}
}

// TestPruneRollupsKeepsWhatGetCandlesServes: of a pair's M1 candles only the newest 5000 (the most
// GetCandles returns) survive, and a granularity or pair with fewer loses nothing.
func TestPruneRollupsKeepsWhatGetCandlesServes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	env := startKeeper(t, ratekeeper.Config{})
	base := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	const extra = 7
	insert := `INSERT INTO ratekeeper.rollups (pair, granularity, bucket, open_bid, high_bid, low_bid, close_bid,
  open_ask, high_ask, low_ask, close_ask, volume)
SELECT $1, $2, $3::timestamptz + make_interval(mins => $4 * i), 150, 150, 150, 150, 150.01, 150.01, 150.01, 150.01, 12
FROM generate_series(0, $5 - 1) AS i`
	for _, r := range []struct {
		pair, granularity string
		stepMin, count    int
	}{{"USD_JPY", "M1", 1, ratekeeper.CandleCountMax + extra}, {"USD_JPY", "M5", 5, 10}, {"EUR_USD", "M1", 1, 20}} {
		if _, err := env.pool.Exec(ctx, insert, r.pair, r.granularity, base, r.stepMin, r.count); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.keeper.PruneRollupsOnce(ctx); err != nil {
		t.Fatal(err)
	}
	count := func(pair, g string) int64 {
		return queryInt(t, env.pool, `SELECT count(*) FROM ratekeeper.rollups WHERE pair = $1 AND granularity = $2`, pair, g)
	}
	mustf(t, count("USD_JPY", "M1") == ratekeeper.CandleCountMax, "USD_JPY M1: %d left", count("USD_JPY", "M1"))
	mustf(t, count("USD_JPY", "M5") == 10 && count("EUR_USD", "M1") == 20, "candles below the limit were pruned")
	oldest := queryInt(t, env.pool, `SELECT extract(epoch FROM min(bucket))::bigint FROM ratekeeper.rollups WHERE pair = 'USD_JPY' AND granularity = 'M1'`)
	mustf(t, oldest == base.Add(extra*time.Minute).Unix(), "the oldest M1 candle kept is %v, want the newest 5000 kept",
		time.Unix(oldest, 0).UTC())
	resp, err := candleClient(t, env.keeper).GetCandles(ctx, &ratesv1.GetCandlesRequest{Pair: "USD_JPY",
		Granularity: ratesv1.Granularity_GRANULARITY_M1, Count: ratekeeper.CandleCountMax})
	mustf(t, err == nil && len(resp.Candles) == ratekeeper.CandleCountMax, "GetCandles after pruning: %v", err)
}
