package ratekeeper_test

import (
	"context"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
)

// oldSchemeCandlesSQL is how the ratekeeper wrote candles before migration 00002: every tick into
// its S5, M1, M5 and H1 candles of ratekeeper.candles.
const oldSchemeCandlesSQL = `INSERT INTO ratekeeper.candles AS c (pair, granularity, bucket,
  open_bid, high_bid, low_bid, close_bid, open_ask, high_ask, low_ask, close_ask, volume)
SELECT $1, g, b, $2::numeric, $2::numeric, $2::numeric, $2::numeric, $3::numeric, $3::numeric, $3::numeric, $3::numeric, 1
FROM unnest($4::text[], $5::timestamptz[]) AS t(g, b)
ON CONFLICT (pair, granularity, bucket) DO UPDATE SET
  high_bid = GREATEST(c.high_bid, EXCLUDED.high_bid), low_bid = LEAST(c.low_bid, EXCLUDED.low_bid), close_bid = EXCLUDED.close_bid,
  high_ask = GREATEST(c.high_ask, EXCLUDED.high_ask), low_ask = LEAST(c.low_ask, EXCLUDED.low_ask), close_ask = EXCLUDED.close_ask,
  volume = c.volume + EXCLUDED.volume`

// applyOldScheme processes r as a replica of the old scheme does: its mark, its tick and its four
// candles, in one transaction.
func applyOldScheme(t *testing.T, pool *pgxpool.Pool, r eventing.RateV1) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO ratekeeper.marks (pair) VALUES ($1) ON CONFLICT DO NOTHING`, string(r.Pair)); err != nil {
			return err
		}
		var n int64
		if err := tx.QueryRow(ctx, `UPDATE ratekeeper.marks SET ticks = ticks + 1, provider_ns = $2, quote_id = $3, epoch = $4
			WHERE pair = $1 RETURNING ticks`, string(r.Pair), r.ProviderTime.UnixNano(), r.QuoteID, r.Epoch).Scan(&n); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ratekeeper.ticks (pair, n, provider_ns, provider_time, quote_id, bid, ask,
			epoch, seq, session, msg_seq_num) VALUES ($1, $2, $3, $4, $5, $6::numeric, $7::numeric, $8, $9, $10, $11)`,
			string(r.Pair), n, r.ProviderTime.UnixNano(), r.ProviderTime, r.QuoteID, r.Bid.String(), r.Ask.String(),
			r.Epoch, r.Seq, r.Session, r.MsgSeqNum); err != nil {
			return err
		}
		codes := []string{"S5", "M1", "M5", "H1"}
		buckets := []time.Time{}
		for _, w := range []time.Duration{5 * time.Second, time.Minute, 5 * time.Minute, time.Hour} {
			buckets = append(buckets, r.ProviderTime.UTC().Truncate(w))
		}
		_, err := tx.Exec(ctx, oldSchemeCandlesSQL, string(r.Pair), r.Bid.String(), r.Ask.String(), codes, buckets)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// oldSchemeDatabase returns the URL of a fresh database migrated only to 00001 (the old scheme),
// whose sessions use a time zone 5:30 off UTC, so that a bucket aligned to local time shows.
func oldSchemeDatabase(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	url := pgtest.URL(t) + "&timezone=Asia/Kolkata"
	first, err := os.ReadFile("migrations/00001_init.sql")
	if err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, url, ratekeeper.Schema, fstest.MapFS{"00001_init.sql": {Data: first}}); err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return url, pool
}

// keeperOn runs a keeper of the current scheme on pool and returns it with its delivery URL.
func keeperOn(t *testing.T, pool *pgxpool.Pool) (*ratekeeper.Keeper, string) {
	t.Helper()
	k, err := ratekeeper.New(pool, nil, ratekeeper.Config{}, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	srv := httptest.NewServer(k.Handler())
	t.Cleanup(srv.Close)
	return k, srv.URL
}

// TestMigrationDuringRollingDeploy: replicas of the old scheme keep processing rates before, during
// and after the migration, interleaved with replicas of the new one, across S5, M1 and H1 buckets;
// every candle served afterwards equals the ticks' (an old replica's ticks reach the rollups once,
// through their S5 candles).
func TestMigrationDuringRollingDeploy(t *testing.T) {
	url, pool := oldSchemeDatabase(t)
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour).Add(59*time.Minute + 50*time.Second)
	pairs := []fx.Pair{"USD_JPY", "EUR_USD"}
	// Quote i is at base + 2 s·i: quotes 0-4 end the hour, quote 5 starts the next.
	for i := range 3 {
		for _, p := range pairs {
			applyOldScheme(t, pool, withEpoch(quote(p, i, base, 2*time.Second), 1))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ratekeeper.Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	k, deliverURL := keeperOn(t, pool)
	for i := 3; i < 60; i++ {
		for j, p := range pairs {
			r := withEpoch(quote(p, i, base, 2*time.Second), 1)
			if (i/4+j)%2 == 0 { // an old replica still serving, for 4 quotes (8 s) in a row
				applyOldScheme(t, pool, r)
				continue
			}
			if d := mustDeliver(t, deliverURL, r); d.outcome != "accepted" {
				t.Fatalf("quote %d of %s: %s", i, p, d.body)
			}
		}
	}
	checkServedCandles(t, k, pool, pairs)
}

// TestMigrationKeepsCandleHistory: the old scheme's wider candles become the rollups, without the
// ticks of each pair's latest S5 candle, which are merged in when read.
func TestMigrationKeepsCandleHistory(t *testing.T) {
	url, pool := oldSchemeDatabase(t)
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour).Add(58 * time.Minute)
	pairs := []fx.Pair{"GBP_USD", "AUD_JPY"}
	for i := range 70 { // 2 min 20 s at 2 s: S5, M1 and H1 buckets closed and one of each still open
		for _, p := range pairs {
			applyOldScheme(t, pool, withEpoch(quote(p, i, base, 2*time.Second), 1))
		}
	}
	// AUD_JPY's latest S5 candle is alone in its M1 candle.
	applyOldScheme(t, pool, withEpoch(quote("AUD_JPY", 100, base, 2*time.Second), 1))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ratekeeper.Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	k, deliverURL := keeperOn(t, pool)
	checkServedCandles(t, k, pool, pairs)
	for _, p := range pairs { // the next rates roll the latest S5 candles up
		mustDeliver(t, deliverURL, withEpoch(quote(p, 200, base, 2*time.Second), 1))
	}
	checkServedCandles(t, k, pool, pairs)
}

// TestMigrationSurvivesOldPrune: a pair idle for two days at the migration, whose latest S5 candle the
// old scheme's prune (which ignores rolled_up_to) deletes soon after, keeps every tick in its wider
// candles; so does a pair quoting at the migration.
func TestMigrationSurvivesOldPrune(t *testing.T) {
	url, pool := oldSchemeDatabase(t)
	idle := time.Now().UTC().Add(-47*time.Hour - 58*time.Minute)
	recent := time.Now().UTC().Add(-time.Minute)
	for i := range 10 {
		applyOldScheme(t, pool, withEpoch(quote("NZD_USD", i, idle, time.Second), 1))
		applyOldScheme(t, pool, withEpoch(quote("USD_CAD", i, recent, time.Second), 1))
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := ratekeeper.Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	// An old replica's prune an hour later, with the old scheme's 48 h retention.
	if _, err := pool.Exec(ctx, `DELETE FROM ratekeeper.candles WHERE granularity = 'S5' AND bucket < now() - interval '47 hours'`); err != nil {
		t.Fatal(err)
	}
	k, deliverURL := keeperOn(t, pool)
	for round := range 2 {
		// The prune took S5 candles of NZD_USD but not its ticks: its S5 candles are not compared.
		checkServed(t, k, pool, []fx.Pair{"NZD_USD"}, widerGranularities)
		checkServedCandles(t, k, pool, []fx.Pair{"USD_CAD"})
		if round == 0 { // the next rates roll up what was not
			for _, p := range []fx.Pair{"NZD_USD", "USD_CAD"} {
				mustDeliver(t, deliverURL, withEpoch(quote(p, 0, time.Now().UTC(), time.Second), 1))
			}
		}
	}
}

// TestMigrationDown: 00002's Down gives the old scheme's candles back, each wider candle equal to
// its ticks, and Up again serves them as before.
func TestMigrationDown(t *testing.T) {
	env := startKeeper(t, ratekeeper.Config{})
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour).Add(58 * time.Minute)
	pairs := []fx.Pair{"USD_CHF"}
	for i := range 80 {
		mustDeliver(t, env.srv.URL, withEpoch(quote("USD_CHF", i, base, 2*time.Second), 1))
	}
	checkServedCandles(t, env.keeper, env.pool, pairs)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	db := stdlib.OpenDBFromPool(env.pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, os.DirFS("migrations"),
		goose.WithTableName(ratekeeper.Schema+".goose_db_version"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for _, g := range []struct{ code, interval string }{{"M1", "1 minute"}, {"M5", "5 minutes"}, {"H1", "1 hour"}} {
		var got []string
		rows, err := env.pool.Query(ctx, `SELECT bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
			open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
			FROM ratekeeper.candles WHERE pair = 'USD_CHF' AND granularity = $1 ORDER BY bucket`, g.code)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var (
				b  time.Time
				pr [8]string
				v  int64
			)
			if err := rows.Scan(&b, &pr[0], &pr[1], &pr[2], &pr[3], &pr[4], &pr[5], &pr[6], &pr[7], &v); err != nil {
				t.Fatal(err)
			}
			got = append(got, candleLine(b, pr[:], v))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		want := ticksAsCandles(t, env.pool, g.interval)["USD_CHF"]
		mustf(t, slices.Equal(got, want), "%s after Down:\n%v\nfrom the ticks:\n%v", g.code, got, want)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatal(err)
	}
	checkServedCandles(t, env.keeper, env.pool, pairs)
}
