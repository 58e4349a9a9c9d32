package rates_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/rates"
)

var apiPairs = []fx.Pair{"USD_JPY", "EUR_USD", "GBP_JPY", "AUD_USD"}

// TestColdStartReadyOnlyWithCompleteSnapshot starts a replica on a topic that already holds rates
// for all pairs but one — more of them than the backfill window, and some older or from a stale
// epoch — and checks it stays unready until the last pair arrives, then serves the newest rate of
// every pair.
func TestColdStartReadyOnlyWithCompleteSnapshot(t *testing.T) {
	env := newRatesEnv(t, rates.Config{Pairs: apiPairs, BackfillRecords: 5}, nil)
	for i := 1; i <= 20; i++ {
		env.publish(t, quote("USD_JPY", i, 1), quote("EUR_USD", i, 1), quote("GBP_JPY", i, 1))
	}
	env.start(t)
	// Caught up with every partition, yet AUD_USD has no rate: not ready.
	var readyErr string
	eventually(t, "catching up", func() bool {
		err := env.svc.Ready(t.Context())
		readyErr = err.Error()
		return err != nil && strings.Contains(readyErr, "no rate yet")
	})
	mustf(t, strings.Contains(readyErr, "1 pair(s): AUD_USD"), "readiness says %q", readyErr)
	if r := get(t, env.srv.URL+"/readyz"); r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "AUD_USD") {
		t.Fatalf("/readyz: %d %s", r.status, r.body)
	}
	if r := get(t, env.srv.URL+"/v1/rates/AUD_USD"); r.status != http.StatusServiceUnavailable || problemCode(r) != "rate_unavailable" {
		t.Fatalf("AUD_USD before its first rate: %d %s", r.status, r.body)
	}
	// Older quotes and a stale epoch's newer quote change nothing.
	env.publish(t, quote("USD_JPY", 30, 2), quote("USD_JPY", 25, 2), quote("USD_JPY", 31, 1), quote("AUD_USD", 7, 1))
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	if r := get(t, env.srv.URL+"/readyz"); r.status != http.StatusOK {
		t.Fatalf("/readyz once complete: %d %s", r.status, r.body)
	}
	eventually(t, "the older and stale quotes", func() bool {
		return metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "duplicate"}) >= 1 &&
			metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "stale_epoch"}) >= 1
	})
	want := map[string]string{"USD_JPY": "151.450", "EUR_USD": "1.08470", "GBP_JPY": "191.990", "AUD_USD": "0.65917"}
	for _, r := range decodeList(t, get(t, env.srv.URL+"/v1/rates").body) {
		mustf(t, r.Bid == want[r.Pair], "%s bid %s, want %s", r.Pair, r.Bid, want[r.Pair])
	}
}

// TestRESTRates covers GET /v1/rates and /v1/rates/{pair}: representation, ETag and 304, the pairs
// filter, the tradeable flag going stale, and problem+json for bad requests.
func TestRESTRates(t *testing.T) {
	const staleAfter = time.Second
	env := startRates(t, rates.Config{Pairs: apiPairs, StaleAfter: staleAfter}, nil)
	for _, p := range apiPairs {
		env.publish(t, quote(p, 1, 1))
	}
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })

	all := get(t, env.srv.URL+"/v1/rates")
	mustf(t, all.status == http.StatusOK, "GET /v1/rates: %d %s", all.status, all.body)
	mustf(t, all.header.Get("Content-Type") == "application/json", "content type %q", all.header.Get("Content-Type"))
	mustf(t, all.header.Get("Cache-Control") == "public, max-age=0, must-revalidate", "cache control %q", all.header.Get("Cache-Control"))
	list := decodeList(t, all.body)
	mustf(t, len(list) == len(apiPairs), "got %d rates", len(list))
	usdjpy := list[0]
	mustf(t, usdjpy == rateBody{Pair: "USD_JPY", Bid: "151.421", Ask: "151.423", Spread: "0.002",
		Time: "2026-01-05T09:00:01.000Z", Tradeable: true}, "USD_JPY is %+v", usdjpy)
	etag := all.header.Get("Etag")
	mustf(t, len(etag) > 2 && etag[0] == '"', "etag %q", etag)

	// Revalidation: 304 without a body while nothing changed, also among several tags and weak form.
	for _, inm := range []string{etag, `"x", ` + etag, "W/" + etag, "*"} {
		r := get(t, env.srv.URL+"/v1/rates", "If-None-Match", inm)
		mustf(t, r.status == http.StatusNotModified && r.body == "" && r.header.Get("Etag") == etag,
			"If-None-Match %s: %d %q", inm, r.status, r.body)
	}
	one := get(t, env.srv.URL+"/v1/rates/usd_jpy")
	mustf(t, one.status == http.StatusOK && decodeRate(t, one.body) == usdjpy, "GET one: %d %s", one.status, one.body)
	mustf(t, get(t, env.srv.URL+"/v1/rates/USD_JPY", "If-None-Match", one.header.Get("Etag")).status == http.StatusNotModified, "single 304")

	// Filter: requested order, and its own ETag.
	filtered := get(t, env.srv.URL+"/v1/rates?pairs=AUD_USD,usd_jpy")
	fl := decodeList(t, filtered.body)
	mustf(t, len(fl) == 2 && fl[0].Pair == "AUD_USD" && fl[1].Pair == "USD_JPY", "filtered: %s", filtered.body)
	mustf(t, filtered.header.Get("Etag") != etag, "filtered response shares the full ETag")
	// Parameters other than pairs are left alone (cache-busters).
	mustf(t, get(t, env.srv.URL+"/v1/rates?_=1712", "If-None-Match", etag).status == http.StatusNotModified, "a cache-buster changed the board")
	mustf(t, get(t, env.srv.URL+"/v1/rates?pairs=AUD_USD,usd_jpy&_=1712").body == filtered.body, "a cache-buster changed the filter")
	// If-None-Match split over several header lines counts whole, for the board and for a filter.
	mustf(t, getINM(t, env.srv.URL+"/v1/rates", `"x"`, etag).status == http.StatusNotModified, "board: the second If-None-Match ignored")
	mustf(t, getINM(t, env.srv.URL+"/v1/rates?pairs=AUD_USD,usd_jpy", `"x"`, filtered.header.Get("Etag")).status == http.StatusNotModified,
		"filter: the second If-None-Match ignored")
	mustf(t, getINM(t, env.srv.URL+"/v1/rates?pairs=AUD_USD,usd_jpy", `"x"`, `"y"`).status == http.StatusOK, "filter: 304 for other tags")

	// A change of one pair changes the full and that pair's ETags, not another filter's.
	audEtag := get(t, env.srv.URL+"/v1/rates?pairs=AUD_USD").header.Get("Etag")
	env.publish(t, quote("USD_JPY", 2, 1))
	eventually(t, "the new USD_JPY", func() bool {
		return get(t, env.srv.URL+"/v1/rates", "If-None-Match", etag).status == http.StatusOK
	})
	mustf(t, decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Bid == "151.422", "USD_JPY not updated")
	mustf(t, get(t, env.srv.URL+"/v1/rates?pairs=AUD_USD", "If-None-Match", audEtag).status == http.StatusNotModified,
		"AUD_USD's ETag changed with USD_JPY")

	// Tradeable goes false once a pair has had no rate for StaleAfter, and the ETag with it.
	env.clock.Advance(staleAfter + time.Millisecond)
	eventually(t, "USD_JPY stale", func() bool { return !decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Tradeable })
	mustf(t, get(t, env.srv.URL+"/v1/rates?pairs=AUD_USD", "If-None-Match", audEtag).status == http.StatusOK,
		"AUD_USD went stale but kept its ETag")
	env.publish(t, quote("USD_JPY", 3, 1))
	eventually(t, "USD_JPY tradeable again", func() bool {
		return decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Tradeable
	})

	for _, c := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/rates/XXX_YYY", 404, "unknown_pair"},
		{"/v1/rates/EUR_GBP", 404, "unknown_pair"}, // a real pair this replica does not serve
		{"/v1/rates?pairs=USD_JPY,NOPE", 400, "invalid_pairs"},
		{"/v1/rates?pairs=USD_JPY,USD_JPY", 400, "invalid_pairs"},
		{"/v1/rates?pairs=EUR_GBP", 400, "invalid_pairs"},
		{"/v1/rates?pairs=USD_JPY&pairs=EUR_USD", 400, "invalid_pairs"},
		{"/v1/rates?pairs=", 400, "invalid_pairs"}, // an empty list is not "every pair"
		{"/v1/rates?pairs=%20", 400, "invalid_pairs"},
		{"/v1/rates?pairs", 400, "invalid_pairs"},
		{"/v1/rates/stream?pairs=", 400, "invalid_pairs"},
		{"/v1/rates/stream?pairs=+&_=1", 400, "invalid_pairs"},
		{"/v1/rates?pairs=%zz", 400, "invalid_query"},
		{"/v1/rates?pairs=" + strings.Repeat("USD_JPY,", 200), 414, "query_too_long"},
		{"/v1/rates/stream?pairs=NOPE", 400, "invalid_pairs"},
		{"/v1/rates/USD_JPY/nope", 404, "not_found"},
		{"/v1/rates/USD_JPY?x=" + strings.Repeat("y", 1100), 414, "query_too_long"},
		{"/elsewhere", 404, "not_found"},
	} {
		r := get(t, env.srv.URL+c.path)
		if r.status != c.status || problemCode(r) != c.code {
			t.Errorf("GET %s: %d %s, want %d %s", c.path, r.status, r.body, c.status, c.code)
		}
	}
	for _, path := range []string{"/v1/rates", "/v1/rates/USD_JPY", "/"} {
		resp, err := http.Post(env.srv.URL+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST %s: %d", path, resp.StatusCode)
		}
	}
}

// A rate the ratekeeper refuses as out of range (a provider time far ahead, a price ten times off)
// is skipped and counted here too: applied, its provider time would become the pair's high-water mark
// and hide every real rate after it.
func TestOutOfRangeRatesAreSkipped(t *testing.T) {
	env := startRates(t, rates.Config{Pairs: []fx.Pair{"USD_JPY"}}, nil)
	env.publish(t, quote("USD_JPY", 1, 1))
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	future := quote("USD_JPY", 2, 1)
	future.ProviderTime = env.cfg.Now().Add(time.Hour)
	wild := quote("USD_JPY", 3, 1)
	wild.Bid, wild.Ask = wild.Bid.Mul(decimal.NewFromInt(100)), wild.Ask.Mul(decimal.NewFromInt(100))
	env.publish(t, future, wild, quote("USD_JPY", 4, 1))
	eventually(t, "the real rate after the bad ones", func() bool {
		return decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Time == "2026-01-05T09:00:04.000Z"
	})
	got := metricValue(t, env.reg, "kawase_rates_applied_total", map[string]string{"outcome": "out_of_range"})
	mustf(t, got == 2, "out_of_range = %v, want 2", got)
}

// getINM is a GET with one If-None-Match header line per tag.
func getINM(t *testing.T, url string, tags ...string) response {
	t.Helper()
	header := make([]string, 0, 2*len(tags))
	for _, tag := range tags {
		header = append(header, "If-None-Match", tag)
	}
	return get(t, url, header...)
}

// TestTradeableFlipsPromptly: a pair turns not tradeable within a short sweep interval of its
// staleness limit passing, however long the limit: with an hour's limit, a sweep every StaleAfter/5
// would flip it twelve minutes late, well past this test's timeout.
func TestTradeableFlipsPromptly(t *testing.T) {
	const staleAfter = time.Hour
	env := startRates(t, rates.Config{Pairs: []fx.Pair{"USD_JPY"}, StaleAfter: staleAfter}, nil)
	env.publish(t, quote("USD_JPY", 1, 1))
	eventually(t, "ready", func() bool { return env.svc.Ready(t.Context()) == nil })
	mustf(t, decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Tradeable, "a fresh rate is not tradeable")
	env.clock.Advance(staleAfter + time.Millisecond)
	eventually(t, "USD_JPY stale", func() bool { return !decodeRate(t, get(t, env.srv.URL+"/v1/rates/USD_JPY").body).Tradeable })
}
