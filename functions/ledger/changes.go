package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Limits of the book's change log (ledger.book_changes, written by a trigger on ledger.accounts; see
// migrations/00002_book_changes.sql).
const (
	// bookChangesRetentionMs is how long a change row is kept at least after its transaction ended;
	// bookChangesPruneMs how often rows are pruned.
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
//
// Every row it needs has an xid at or above since's xmin; if a prune has deleted below a cutoff above
// that (book_changes_pruned, read in the same statement, so from the same snapshot), some may be
// gone, and it returns errChangesPruned: the caller reads the whole book.
func readBookChanges(ctx context.Context, pool *pgxpool.Pool, since string) ([]string, string, error) {
	var snap string
	var ids []string
	var pruned bool
	err := pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text, COALESCE(array_agg(DISTINCT a.id), '{}'),
			(SELECT cutoff > pg_snapshot_xmin($1::pg_snapshot) FROM ledger.book_changes_pruned)
		FROM ledger.book_changes c CROSS JOIN LATERAL unnest(c.accounts) AS a(id)
		WHERE c.xid >= pg_snapshot_xmax($1::pg_snapshot)
			OR c.xid = ANY(ARRAY(SELECT pg_snapshot_xip($1::pg_snapshot)))`,
		since).Scan(&snap, &ids, &pruned)
	if err != nil {
		return nil, "", fmt.Errorf("watcher: read book changes: %w", err)
	}
	if pruned {
		return nil, "", errChangesPruned
	}
	return ids, snap, nil
}

// errChangesPruned: rows the watcher needs may have been pruned; it must read the whole book.
var errChangesPruned = errors.New("watcher: the book's changes since the last read were pruned")

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

// horizon is the oldest transaction id still in progress (pg_snapshot_xmin) at a moment: every
// transaction below it had ended then, so its change row was visible to every read of the log since.
type horizon struct {
	at   time.Time
	xmin string // xid8 as text
}

// pruneCutoff returns, of horizons (oldest first), the newest taken at least retention before now,
// and the horizons after it, which are kept for later rounds; ok is false when none is that old.
func pruneCutoff(horizons []horizon, now time.Time, retention time.Duration) (cutoff horizon, rest []horizon, ok bool) {
	i := 0
	for i < len(horizons) && now.Sub(horizons[i].at) >= retention {
		i++
	}
	if i == 0 {
		return horizon{}, horizons, false
	}
	return horizons[i-1], horizons[i:], true
}

// pruneBookChanges notes the current horizon every bookChangesPruneMs and deletes the change rows of
// the transactions below the horizon noted at least bookChangesRetentionMs ago, until ctx ends.
// Those rows were visible for that long, and a watcher reads the log at least every
// bookChangesGapMaxMs or else the whole book, so none it needs goes. Every replica prunes, whether
// or not it watches, so the log stays bounded while no watcher runs; durations are of this
// process's clock, never compared with the database's. A failed round is counted, logged and tried
// again at the next interval, without bound on purpose: the rows only wait.
func (l *Ledger) pruneBookChanges(ctx context.Context) error {
	tick := time.NewTicker(bookChangesPruneMs * time.Millisecond)
	defer tick.Stop()
	var horizons []horizon
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		var err error
		if horizons, err = pruneRound(ctx, l.pool, horizons, time.Now); err != nil && ctx.Err() == nil {
			l.m.watcherErrors.WithLabelValues("prune").Inc()
			l.log.Warnw("pruning the book's changes failed; will retry", "error", err)
		}
	}
}

// pruneRound notes the current horizon and deletes the rows below the one noted at least
// bookChangesRetentionMs before now; it returns the horizons still to keep.
func pruneRound(ctx context.Context, pool *pgxpool.Pool, horizons []horizon, now func() time.Time) ([]horizon, error) {
	var h horizon
	if err := pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&h.xmin); err != nil {
		return horizons, fmt.Errorf("prune book changes: read horizon: %w", err)
	}
	h.at = now() // after the read: the horizon is never dated before it was read
	horizons = noteHorizon(horizons, h)
	cutoff, rest, ok := pruneCutoff(horizons, h.at, bookChangesRetentionMs*time.Millisecond)
	if !ok {
		return horizons, nil
	}
	if _, err := deleteBookChanges(ctx, pool, cutoff.xmin); err != nil {
		return horizons, err
	}
	return rest, nil
}

// noteHorizon appends h to horizons, or starts them again from h when transaction ids went back (a
// failover to a standby that was behind): the horizons noted before say nothing of the transactions
// now.
func noteHorizon(horizons []horizon, h horizon) []horizon {
	if n := len(horizons); n > 0 && xidBefore(h.xmin, horizons[n-1].xmin) {
		horizons = nil
	}
	return append(horizons, h)
}

// xidBefore says whether xid8 a (as text) is below b; a malformed one compares as not below.
func xidBefore(a, b string) bool {
	x, errA := strconv.ParseUint(a, 10, 64)
	y, errB := strconv.ParseUint(b, 10, 64)
	return errA == nil && errB == nil && x < y
}

// deleteBookChanges deletes the change rows of transactions below xmin (an xid8 as text) and
// records xmin as the cutoff, in one transaction, and returns how many rows went.
func deleteBookChanges(ctx context.Context, pool *pgxpool.Pool, xmin string) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE ledger.book_changes_pruned SET cutoff = $1::xid8 WHERE cutoff < $1::xid8`, xmin); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM ledger.book_changes WHERE xid < $1::xid8`, xmin)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune book changes: %w", err)
	}
	return n, nil
}
