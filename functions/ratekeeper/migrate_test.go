package ratekeeper_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
)

// TestMigrationToRolledUpCandles: candles written by the eager scheme (every tick in all four
// granularities) are migrated so that the wider candles no longer hold each pair's open S5 candle,
// which the new scheme merges in when read and rolls up when it closes.
func TestMigrationToRolledUpCandles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	url := pgtest.URL(t)
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
	defer pool.Close()
	// USD_JPY: S5 12:00:00 (2 ticks) and 12:00:05 (1 tick, open), so M1/M5/H1 hold 3 ticks.
	// EUR_USD: S5 12:01:00 (1 tick, open) alone in its minute; its M5 and H1 hold 4 ticks.
	if _, err := pool.Exec(ctx, `INSERT INTO ratekeeper.candles (pair, granularity, bucket, open_bid, high_bid,
		low_bid, close_bid, open_ask, high_ask, low_ask, close_ask, volume)
		SELECT pair, g, b::timestamptz, 1, 1, 1, 1, 2, 2, 2, 2, v FROM (VALUES
		('USD_JPY', 'S5', '2026-01-05 12:00:00Z', 2), ('USD_JPY', 'S5', '2026-01-05 12:00:05Z', 1),
		('USD_JPY', 'M1', '2026-01-05 12:00:00Z', 3), ('USD_JPY', 'M5', '2026-01-05 12:00:00Z', 3),
		('USD_JPY', 'H1', '2026-01-05 12:00:00Z', 3),
		('EUR_USD', 'S5', '2026-01-05 11:59:55Z', 3), ('EUR_USD', 'S5', '2026-01-05 12:01:00Z', 1),
		('EUR_USD', 'M1', '2026-01-05 11:59:00Z', 3), ('EUR_USD', 'M1', '2026-01-05 12:01:00Z', 1),
		('EUR_USD', 'M5', '2026-01-05 11:55:00Z', 3), ('EUR_USD', 'M5', '2026-01-05 12:00:00Z', 1),
		('EUR_USD', 'H1', '2026-01-05 11:00:00Z', 3), ('EUR_USD', 'H1', '2026-01-05 12:00:00Z', 1)
		) AS t(pair, g, b, v)`); err != nil {
		t.Fatal(err)
	}
	if err := ratekeeper.Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT pair || ' ' || granularity || ' ' || to_char(bucket AT TIME ZONE 'UTC', 'HH24:MI:SS')
		|| ' ' || volume FROM ratekeeper.candles ORDER BY pair, granularity, bucket`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"EUR_USD H1 11:00:00 3", "EUR_USD M1 11:59:00 3", "EUR_USD M5 11:55:00 3",
		"EUR_USD S5 11:59:55 3", "EUR_USD S5 12:01:00 1",
		"USD_JPY H1 12:00:00 2", "USD_JPY M1 12:00:00 2", "USD_JPY M5 12:00:00 2",
		"USD_JPY S5 12:00:00 2", "USD_JPY S5 12:00:05 1",
	}
	mustf(t, slices.Equal(got, want), "candles after migrating:\n%v\nwant:\n%v", got, want)
}
