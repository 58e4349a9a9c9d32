package ledger

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
)

// changesDB is a migrated ledger schema with customer accounts A, B and C.
func changesDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t, Migrate)
	if _, err := pool.Exec(ctx, `INSERT INTO ledger.accounts (id, kind, currency) VALUES
		('A', 'customer', 'JPY'), ('B', 'customer', 'JPY'), ('C', 'customer', 'USD')`); err != nil {
		t.Fatal(err)
	}
	return pool
}

// TestBookChangesFollowCommitsOutOfOrder: a transaction that started before the watcher's read and
// commits after it is found by the next read, though a later one committed first; one that rolls back
// is never found; every read finds each change once.
func TestBookChangesFollowCommitsOutOfOrder(t *testing.T) {
	ctx := context.Background()
	pool := changesDB(t)
	update := `UPDATE ledger.accounts SET tx_seq = tx_seq + 1 WHERE id = ANY($1)`
	snap0, err := readBookSnapshot(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	slow, err := pool.Begin(ctx) // started first, commits last
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Exec(ctx, update, []string{"A"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, update, []string{"B", "C"}); err != nil {
		t.Fatal(err)
	}
	aborted, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := aborted.Exec(ctx, update, []string{"C"}); err != nil {
		t.Fatal(err)
	}
	read := func(since string) ([]string, string) {
		t.Helper()
		ids, snap, err := readBookChanges(ctx, pool, since)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		return ids, snap
	}
	ids, snap1 := read(snap0)
	if !slices.Equal(ids, []string{"B", "C"}) {
		t.Fatalf("first read = %v, want [B C] (A and the aborted C are not committed)", ids)
	}
	if err := aborted.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ids, snap2 := read(snap1)
	if !slices.Equal(ids, []string{"A"}) {
		t.Fatalf("second read = %v, want [A], committed after the first read though it started before B's", ids)
	}
	if ids, _ := read(snap2); len(ids) != 0 {
		t.Fatalf("third read = %v, want nothing new", ids)
	}
	if ids, _ := read(snap0); !slices.Equal(ids, []string{"A", "B", "C"}) {
		t.Fatalf("read from the start = %v, want [A B C]", ids)
	}
	// House accounts are never in the log; an insert is not a change.
	if _, err := pool.Exec(ctx, `UPDATE ledger.accounts SET tx_seq = tx_seq WHERE kind = 'house'`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO ledger.accounts (id, kind, currency) VALUES ('D', 'customer', 'JPY')`); err != nil {
		t.Fatal(err)
	}
	if ids, _ := read(snap2); len(ids) != 0 {
		t.Fatalf("after a house update and an insert = %v, want nothing", ids)
	}
}

// TestBookChangesArePruned: rows older than the retention go, younger ones stay.
func TestBookChangesArePruned(t *testing.T) {
	ctx := context.Background()
	pool := changesDB(t)
	if _, err := pool.Exec(ctx, `INSERT INTO ledger.book_changes (accounts) VALUES ('{A}')`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	horizons, err := pruneRound(ctx, pool, nil, func() time.Time { return start }) // notes a horizon above A's transaction
	if err != nil || len(horizons) != 1 {
		t.Fatalf("first round: %v, %d horizons", err, len(horizons))
	}
	if _, err := pool.Exec(ctx, `INSERT INTO ledger.book_changes (accounts) VALUES ('{B}')`); err != nil {
		t.Fatal(err)
	}
	left := func() []string {
		var ids []string
		if err := pool.QueryRow(ctx, `SELECT coalesce(array_agg(accounts[1] ORDER BY xid), '{}') FROM ledger.book_changes`).Scan(&ids); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if horizons, err = pruneRound(ctx, pool, horizons, func() time.Time { return start.Add(bookChangesRetentionMs * time.Millisecond / 2) }); err != nil {
		t.Fatal(err)
	}
	if got := left(); !slices.Equal(got, []string{"A", "B"}) {
		t.Fatalf("before the retention passed, left %v, want [A B]", got)
	}
	if horizons, err = pruneRound(ctx, pool, horizons, func() time.Time { return start.Add(bookChangesRetentionMs * time.Millisecond) }); err != nil {
		t.Fatal(err)
	}
	if got := left(); !slices.Equal(got, []string{"B"}) {
		t.Fatalf("a retention after the first horizon, left %v, want [B]", got)
	}
	if len(horizons) != 2 {
		t.Fatalf("%d horizons kept, want the 2 taken after the one used", len(horizons))
	}
}

// TestPruneCutoff: the cutoff is the newest horizon at least a retention old, later ones are kept, and
// a horizon whose transaction ids went back starts them again.
func TestPruneCutoff(t *testing.T) {
	t0 := time.Now()
	hs := []horizon{{at: t0, xmin: "1"}, {at: t0.Add(10 * time.Second), xmin: "2"}, {at: t0.Add(20 * time.Second), xmin: "3"}}
	if _, rest, ok := pruneCutoff(hs, t0.Add(59*time.Second), time.Minute); ok || len(rest) != 3 {
		t.Fatalf("before a minute: ok=%v, %d kept", ok, len(rest))
	}
	if got := noteHorizon(hs[:2:2], horizon{at: t0.Add(20 * time.Second), xmin: "10"}); len(got) != 3 {
		t.Fatalf("a later horizon: %d kept, want 3", len(got))
	}
	if got := noteHorizon(hs[:2:2], horizon{at: t0.Add(20 * time.Second), xmin: "1"}); len(got) != 1 || got[0].xmin != "1" {
		t.Fatalf("transaction ids went back: kept %+v, want only the new horizon", got)
	}
	cutoff, rest, ok := pruneCutoff(hs, t0.Add(75*time.Second), time.Minute)
	if !ok || cutoff.xmin != "2" || len(rest) != 1 || rest[0].xmin != "3" {
		t.Fatalf("at 75 s: cutoff %+v ok=%v rest %+v", cutoff, ok, rest)
	}
}

// TestBookChangesNoticePruning: a read whose previous snapshot is older than a prune's cutoff
// answers errChangesPruned (rows it needs may be gone), whatever the clocks said; an older cutoff
// does not disturb it.
func TestBookChangesNoticePruning(t *testing.T) {
	ctx := context.Background()
	pool := changesDB(t)
	since, err := readBookSnapshot(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	var before string // a horizon below every transaction after since
	if err := pool.QueryRow(ctx, `SELECT pg_snapshot_xmin($1::pg_snapshot)::text`, since).Scan(&before); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO ledger.book_changes (accounts) VALUES ('{A}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := deleteBookChanges(ctx, pool, before); err != nil {
		t.Fatal(err)
	}
	if ids, _, err := readBookChanges(ctx, pool, since); err != nil || !slices.Equal(ids, []string{"A"}) {
		t.Fatalf("after a prune below since: %v, %v; want [A]", ids, err)
	}
	var now string
	if err := pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	if n, err := deleteBookChanges(ctx, pool, now); err != nil || n != 1 {
		t.Fatalf("prune above A's transaction deleted %d rows (%v), want 1", n, err)
	}
	if _, _, err := readBookChanges(ctx, pool, since); !errors.Is(err, errChangesPruned) {
		t.Fatalf("after a prune above since: %v, want errChangesPruned", err)
	}
}
