package ledger

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Limits of the book's change log (ledger.book_changes, written by a trigger on ledger.accounts; see
// migrations/00002_book_changes.sql).
const (
	// bookChangesRetentionMs is how long a change row is kept; bookChangesPruneMs how often the rows
	// older than that are deleted.
	bookChangesRetentionMs = 60_000
	bookChangesPruneMs     = 10_000
	// bookChangesGapMaxMs: a watcher that has not read the changes for this long may have missed
	// pruned rows, so it reads the whole book instead.
	bookChangesGapMaxMs = bookChangesRetentionMs / 2
)

// readBookSnapshot returns the current snapshot (pg_snapshot as text). A read of the whole book that
// starts after it sees every transaction the snapshot sees, so the changes after it are all that a
// later readBookChanges needs to find.
func readBookSnapshot(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var snap string
	if err := pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return "", fmt.Errorf("watcher: read snapshot: %w", err)
	}
	return snap, nil
}

// readBookChanges returns the accounts changed by the transactions that committed after since (were
// not visible in that snapshot), and the snapshot of this read. The statement sees exactly the
// transactions visible in its own snapshot, which pg_current_snapshot returns, so a transaction that
// commits meanwhile is found by the next read; one that started before since and commits after it
// is found too, since it was in progress in since.
//
// Not visible in since means: at or above its xmax, or in its list of transactions in progress; both
// are index lookups. (Testing pg_visible_in_snapshot on every row from its xmin on would scan every
// row since the oldest transaction in progress anywhere in the cluster: measured 19-25 ms for 48-60k
// rows while one transaction stayed open, against 0.9 ms this way.)
func readBookChanges(ctx context.Context, pool *pgxpool.Pool, since string) ([]string, string, error) {
	var snap string
	var ids []string
	err := pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text, COALESCE(array_agg(DISTINCT a.id), '{}')
		FROM ledger.book_changes c CROSS JOIN LATERAL unnest(c.accounts) AS a(id)
		WHERE c.xid >= pg_snapshot_xmax($1::pg_snapshot)
			OR c.xid = ANY(ARRAY(SELECT pg_snapshot_xip($1::pg_snapshot)))`,
		since).Scan(&snap, &ids)
	if err != nil {
		return nil, "", fmt.Errorf("watcher: read book changes: %w", err)
	}
	return ids, snap, nil
}

// spliceAccounts replaces in accts the accounts named in changed by fresh (the changed accounts that
// still have positions).
func spliceAccounts(accts []marginAccount, changed map[string]bool, fresh []marginAccount) []marginAccount {
	out := slices.DeleteFunc(slices.Clone(accts), func(a marginAccount) bool { return changed[a.ID] })
	return append(out, fresh...)
}

// splicePending replaces in book the orders of the accounts named in changed by fresh (those
// accounts' pending orders now).
func splicePending(book []pendingOrder, changed map[string]bool, fresh []pendingOrder) []pendingOrder {
	out := slices.DeleteFunc(slices.Clone(book), func(o pendingOrder) bool { return changed[o.AccountID] })
	return append(out, fresh...)
}

// pruneBookChanges deletes change rows older than bookChangesRetentionMs every bookChangesPruneMs
// until ctx ends. Every replica prunes, whether or not it watches, so the log stays bounded while no
// watcher runs. A failed prune is counted, logged and tried again at the next interval, without
// bound on purpose: the rows only wait.
func (l *Ledger) pruneBookChanges(ctx context.Context) error {
	tick := time.NewTicker(bookChangesPruneMs * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if _, err := deleteBookChanges(ctx, l.pool, bookChangesRetentionMs*time.Millisecond); err != nil && ctx.Err() == nil {
			l.m.watcherErrors.WithLabelValues("prune").Inc()
			l.log.Warnw("pruning the book's changes failed; will retry", "error", err)
		}
	}
}

// deleteBookChanges deletes the change rows recorded more than retention ago and returns how many.
func deleteBookChanges(ctx context.Context, pool *pgxpool.Pool, retention time.Duration) (int64, error) {
	tag, err := pool.Exec(ctx, `DELETE FROM ledger.book_changes
		WHERE recorded_at < clock_timestamp() - $1::bigint * interval '1 millisecond'`, retention.Milliseconds())
	if err != nil {
		return 0, fmt.Errorf("prune book changes: %w", err)
	}
	return tag.RowsAffected(), nil
}
