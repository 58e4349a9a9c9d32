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
)

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
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := k.PruneOnce(ctx); err != nil {
			k.log.Warnw("pruning ticks failed; trying again next round", "error", err)
		}
	}
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
