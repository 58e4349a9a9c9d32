package ratekeeper

import (
	"context"
	"fmt"
	"time"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// Pruning limits: every pruneIntervalMs, delete expired ticks and S5 candles pair by pair, at most
// pruneChunkRowsMax rows per statement so no transaction holds many locks for long.
const (
	pruneIntervalMs   = 60_000
	pruneChunkRowsMax = 10_000
	pruneChunksMax    = 100
	// rollupPruneIntervalMs is how often the M1, M5 and H1 candles beyond the newest rollupsKeptMax of
	// a pair and granularity are deleted: a pair gains at most 60 M1 candles an hour.
	rollupPruneIntervalMs = 3_600_000
	// rollupsKeptMax is how many of a pair's newest candles of each granularity are kept: all that
	// GetCandles can serve (it returns the latest CandleCountMax), so older ones only filled the disk
	// (M1 alone, 50 pairs, about 26 million rows a year).
	rollupsKeptMax = CandleCountMax
)

// pruneRollupsSQL deletes, in a chunk of at most $4 rows, the candles of pair $1 and granularity $2
// older than its $3 newest. With fewer, the subquery is NULL and nothing is deleted.
const pruneRollupsSQL = `DELETE FROM ratekeeper.rollups WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM ratekeeper.rollups WHERE pair = $1 AND granularity = $2 AND bucket <= (
    SELECT bucket FROM ratekeeper.rollups WHERE pair = $1 AND granularity = $2 ORDER BY bucket DESC OFFSET $3 LIMIT 1)
  LIMIT $4))`

// pruneTicksSQL keeps the pair's last processed tick whatever its age (its n is the mark's count):
// GetLastTicks serves it to a rates replica that starts while the pair is quiet.
const pruneTicksSQL = `DELETE FROM ratekeeper.ticks WHERE ctid = ANY(ARRAY(
  SELECT ctid FROM ratekeeper.ticks WHERE pair = $1 AND provider_ns < $2
    AND n < coalesce((SELECT ticks FROM ratekeeper.marks WHERE pair = $1), 0) LIMIT $3))`

// pruneCandlesSQL keeps the pair's S5 candles not yet rolled up whatever their age (normally the open
// one): the rollups do not hold them yet (see granularities).
const pruneCandlesSQL = `DELETE FROM ratekeeper.candles WHERE pair = $1 AND granularity = 'S5' AND bucket < $2
  AND bucket < coalesce((SELECT rolled_up_to FROM ratekeeper.marks WHERE pair = $1), '-infinity')`

// prune deletes ticks and S5 candles older than TickRetention (but S5 candles not yet rolled up). A
// failed round is logged and tried again on the next tick (bounded by the interval); the marks,
// which make processing exactly-once, are never pruned.
func (k *Keeper) prune(ctx context.Context) error {
	t := time.NewTicker(pruneIntervalMs * time.Millisecond)
	defer t.Stop()
	var rollupsPrunedAt time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := k.PruneOnce(ctx); err != nil {
			k.log.Warnw("pruning ticks failed; trying again next round", "error", err)
		}
		if time.Since(rollupsPrunedAt) < rollupPruneIntervalMs*time.Millisecond {
			continue
		}
		if err := k.PruneRollupsOnce(ctx); err != nil {
			k.log.Warnw("pruning candles failed; trying again next round", "error", err)
			continue
		}
		rollupsPrunedAt = time.Now()
	}
}

// PruneRollupsOnce deletes, per pair and granularity, the M1, M5 and H1 candles older than the
// newest rollupsKeptMax (in chunks) and returns the first error. It is exported for tests and
// operators.
func (k *Keeper) PruneRollupsOnce(ctx context.Context) error {
	for _, spec := range fx.Pairs() {
		for _, g := range rollups {
			for range pruneChunksMax {
				tag, err := k.pool.Exec(ctx, pruneRollupsSQL, string(spec.Pair), g.code, rollupsKeptMax, pruneChunkRowsMax)
				if err != nil {
					return fmt.Errorf("prune %s candles of %s: %w", g.code, spec.Pair, err)
				}
				k.metrics.rollupsPruned.Add(float64(tag.RowsAffected()))
				if tag.RowsAffected() < pruneChunkRowsMax {
					break
				}
			}
		}
	}
	return nil
}

// PruneOnce deletes ticks and S5 candles older than TickRetention (in chunks) and returns the first
// error. It is exported for tests and operators.
func (k *Keeper) PruneOnce(ctx context.Context) error {
	if k.cfg.TickRetention <= 0 {
		return nil
	}
	cutoff := k.cfg.Now().Add(-k.cfg.TickRetention)
	for _, spec := range fx.Pairs() {
		for range pruneChunksMax {
			tag, err := k.pool.Exec(ctx, pruneTicksSQL, string(spec.Pair), cutoff.UnixNano(), pruneChunkRowsMax)
			if err != nil {
				return fmt.Errorf("prune ticks of %s: %w", spec.Pair, err)
			}
			k.metrics.pruned.Add(float64(tag.RowsAffected()))
			if tag.RowsAffected() < pruneChunkRowsMax {
				break
			}
		}
		if _, err := k.pool.Exec(ctx, pruneCandlesSQL, string(spec.Pair), cutoff); err != nil {
			return fmt.Errorf("prune candles of %s: %w", spec.Pair, err)
		}
	}
	return nil
}
