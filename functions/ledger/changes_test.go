package ledger

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
)

// changesDB is a migrated ledger schema with customer accounts A, B and C.
func changesDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	url := pgtest.URL(t)
	if err := Migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
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
	if _, err := pool.Exec(ctx, `INSERT INTO ledger.book_changes (accounts, recorded_at) VALUES
		('{A}', clock_timestamp() - interval '2 minutes'), ('{B}', clock_timestamp() - interval '10 seconds')`); err != nil {
		t.Fatal(err)
	}
	n, err := deleteBookChanges(ctx, pool, time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("pruned %d rows (%v), want 1", n, err)
	}
	var left []string
	if err := pool.QueryRow(ctx, `SELECT array_agg(accounts[1]) FROM ledger.book_changes`).Scan(&left); err != nil || !slices.Equal(left, []string{"B"}) {
		t.Fatalf("left %v (%v), want [B]", left, err)
	}
}
