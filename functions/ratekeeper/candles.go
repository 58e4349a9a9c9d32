package ratekeeper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// CandleCountMax is the most candles one GetCandles call returns.
const CandleCountMax = 5000

// granularity is one candle width the keeper maintains.
type granularity struct {
	code  string
	width time.Duration
	proto ratesv1.Granularity
}

// granularities are the candle widths served. Only the S5 candle is written for every accepted tick
// (in ratekeeper.candles); S5 candles are rolled up into the M1, M5 and H1 candles (in
// ratekeeper.rollups) once closed, that is in the transaction of the pair's first tick of a later S5
// bucket, and the pair's mark records how far (rolled_up_to). A read of a wider candle merges in the
// pair's S5 candles not yet rolled up: normally just the open one. That writes about one candle row
// per tick instead of four (the candle upserts were the ratekeeper's largest database cost). See
// migrations/00002_candles_rolled_up.sql for writers of the old scheme during a rolling deploy.
var granularities = []granularity{
	{code: "S5", width: 5 * time.Second, proto: ratesv1.Granularity_GRANULARITY_S5},
	{code: "M1", width: time.Minute, proto: ratesv1.Granularity_GRANULARITY_M1},
	{code: "M5", width: 5 * time.Minute, proto: ratesv1.Granularity_GRANULARITY_M5},
	{code: "H1", width: time.Hour, proto: ratesv1.Granularity_GRANULARITY_H1},
}

// s5 is the granularity written per tick; rollups are those built from closed S5 candles.
var s5, rollups = granularities[0], granularities[1:]

func granularityOf(g ratesv1.Granularity) (granularity, bool) {
	for _, gr := range granularities {
		if gr.proto == g {
			return gr, true
		}
	}
	return granularity{}, false
}

type candleKey struct {
	pair   fx.Pair
	code   string
	bucket time.Time
}

// candleAgg is the OHLC of one batch's ticks in one candle; it is merged into the stored candle.
type candleAgg struct {
	openBid, highBid, lowBid, closeBid decimal.Decimal
	openAsk, highAsk, lowAsk, closeAsk decimal.Decimal
	volume                             int64
}

// candleSet aggregates a batch's accepted ticks per S5 candle, in order of first appearance, and
// collects the ranges of closed S5 candles to roll up. Accepted ticks of a pair are strictly newer
// than every earlier one, so a batch's close is the candle's close.
type candleSet struct {
	keys    []candleKey
	aggs    map[candleKey]*candleAgg
	rollups rollupRanges
}

// rollupRanges are, per pair, the S5 buckets [from, to) to roll up; an invalid from means from the
// first.
type rollupRanges struct {
	pair     []string
	from, to []pgtype.Timestamptz
}

func newCandleSet() *candleSet { return &candleSet{aggs: map[candleKey]*candleAgg{}} }

func (c *candleSet) add(r *eventing.RateV1) {
	k := candleKey{pair: r.Pair, code: s5.code, bucket: r.ProviderTime.UTC().Truncate(s5.width)}
	a, ok := c.aggs[k]
	if !ok {
		c.keys = append(c.keys, k)
		c.aggs[k] = &candleAgg{openBid: r.Bid, highBid: r.Bid, lowBid: r.Bid, closeBid: r.Bid,
			openAsk: r.Ask, highAsk: r.Ask, lowAsk: r.Ask, closeAsk: r.Ask, volume: 1}
		return
	}
	a.highBid, a.lowBid, a.closeBid = decimal.Max(a.highBid, r.Bid), decimal.Min(a.lowBid, r.Bid), r.Bid
	a.highAsk, a.lowAsk, a.closeAsk = decimal.Max(a.highAsk, r.Ask), decimal.Min(a.lowAsk, r.Ask), r.Ask
	a.volume++
}

// addRollup rolls up the pair's S5 candles in [from, to) (from the first when hasFrom is false).
func (c *candleSet) addRollup(pair fx.Pair, from time.Time, hasFrom bool, to time.Time) {
	r := &c.rollups
	r.pair = append(r.pair, string(pair))
	r.from = append(r.from, pgtype.Timestamptz{Time: from, Valid: hasFrom})
	r.to = append(r.to, pgtype.Timestamptz{Time: to, Valid: true})
}

// mergeCandleSQL merges a candle (EXCLUDED) into the stored one (c) of its bucket, which holds
// earlier ticks: the open stays, high and low widen, the close and the volume follow.
const mergeCandleSQL = `
ON CONFLICT (pair, granularity, bucket) DO UPDATE SET
  high_bid = GREATEST(c.high_bid, EXCLUDED.high_bid), low_bid = LEAST(c.low_bid, EXCLUDED.low_bid),
  close_bid = EXCLUDED.close_bid,
  high_ask = GREATEST(c.high_ask, EXCLUDED.high_ask), low_ask = LEAST(c.low_ask, EXCLUDED.low_ask),
  close_ask = EXCLUDED.close_ask,
  volume = c.volume + EXCLUDED.volume`

const upsertCandlesSQL = `INSERT INTO ratekeeper.candles AS c (pair, granularity, bucket,
  open_bid, high_bid, low_bid, close_bid, open_ask, high_ask, low_ask, close_ask, volume)
SELECT t.pair, t.g, t.b, t.ob::numeric, t.hb::numeric, t.lb::numeric, t.cb::numeric,
  t.oa::numeric, t.ha::numeric, t.la::numeric, t.ca::numeric, t.v
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
  $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[]) AS t(pair, g, b, ob, hb, lb, cb, oa, ha, la, ca, v)
` + mergeCandleSQL

// rollupCandlesSQL merges the S5 candles of each pair $1 in [$2, $3) into the rollups of widths $4
// (codes) and $5 (seconds). It runs after the batch's S5 upsert, so an S5 candle the batch both wrote
// and closed is rolled up whole; S5 candles of one wider candle are combined first, in time order, and
// merged into the stored one, whose open stays. Buckets are aligned to UTC, as Go's Truncate aligns
// them.
const rollupCandlesSQL = `INSERT INTO ratekeeper.rollups AS c (pair, granularity, bucket,
  open_bid, high_bid, low_bid, close_bid, open_ask, high_ask, low_ask, close_ask, volume)
SELECT s.pair, g.code, date_bin(make_interval(secs => g.secs), s.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
  (array_agg(s.open_bid ORDER BY s.bucket))[1], max(s.high_bid), min(s.low_bid), (array_agg(s.close_bid ORDER BY s.bucket DESC))[1],
  (array_agg(s.open_ask ORDER BY s.bucket))[1], max(s.high_ask), min(s.low_ask), (array_agg(s.close_ask ORDER BY s.bucket DESC))[1],
  sum(s.volume)::bigint
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r(pair, since, until)
JOIN ratekeeper.candles s ON s.pair = r.pair AND s.granularity = 'S5'
  AND s.bucket >= coalesce(r.since, '-infinity') AND s.bucket < r.until
CROSS JOIN unnest($4::text[], $5::bigint[]) AS g(code, secs)
GROUP BY s.pair, g.code, 3
` + mergeCandleSQL

// queueRollups queues the batch's rollups, if any, into b (after the S5 upsert).
func (c *candleSet) queueRollups(b *pgx.Batch) {
	if len(c.rollups.pair) == 0 {
		return
	}
	codes, secs := make([]string, 0, len(rollups)), make([]int64, 0, len(rollups))
	for _, g := range rollups {
		codes, secs = append(codes, g.code), append(secs, int64(g.width/time.Second))
	}
	b.Queue(rollupCandlesSQL, c.rollups.pair, c.rollups.from, c.rollups.to, codes, secs)
}

func (c *candleSet) queue(b *pgx.Batch) {
	n := len(c.keys)
	pairs, codes, buckets := make([]string, 0, n), make([]string, 0, n), make([]time.Time, 0, n)
	cols := make([][]string, 8)
	volumes := make([]int64, 0, n)
	for _, k := range c.keys {
		a := c.aggs[k]
		pairs, codes, buckets = append(pairs, string(k.pair)), append(codes, k.code), append(buckets, k.bucket)
		for i, d := range []decimal.Decimal{a.openBid, a.highBid, a.lowBid, a.closeBid, a.openAsk, a.highAsk, a.lowAsk, a.closeAsk} {
			cols[i] = append(cols[i], d.String())
		}
		volumes = append(volumes, a.volume)
	}
	b.Queue(upsertCandlesSQL, pairs, codes, buckets, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5],
		cols[6], cols[7], volumes)
}

// candleServer is the CandleService: the ratekeeper's read path for its candles.
type candleServer struct {
	ratesv1.UnimplementedCandleServiceServer
	k *Keeper
}

// selectS5CandlesSQL reads the latest $2 S5 candles of pair $1, newest first.
const selectS5CandlesSQL = `SELECT 'S5', bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
  open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
FROM ratekeeper.candles WHERE pair = $1 AND granularity = 'S5' ORDER BY bucket DESC LIMIT $2`

// selectRollupsSQL reads the latest $3 rollups of pair $1 at granularity $2, newest first, then the
// pair's S5 candles not yet rolled up, oldest first (normally just the open one). One statement, so
// both come from one snapshot.
const selectRollupsSQL = `(SELECT granularity, bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
  open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
FROM ratekeeper.rollups WHERE pair = $1 AND granularity = $2 ORDER BY bucket DESC LIMIT $3)
UNION ALL
(SELECT granularity, bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
  open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
FROM ratekeeper.candles WHERE pair = $1 AND granularity = 'S5'
  AND bucket >= coalesce((SELECT rolled_up_to FROM ratekeeper.marks WHERE pair = $1), '-infinity')
ORDER BY bucket)`

// errCandlesInconsistent: the stored candles break the rollup invariant (every S5 candle not rolled
// up is newer than every one rolled up); a retry will not help.
var errCandlesInconsistent = errors.New("the rollups and the pair's mark disagree")

// storedCandle is one candle as read: prices in the order open, high, low, close of bid, then ask.
type storedCandle struct {
	bucket time.Time
	prices [8]decimal.Decimal
	volume int64
}

// mergeOpen merges an S5 candle not yet rolled up, open, into candles (of granularity g, newest
// first, at most count): into the newest when it is the wider candle that holds open, else as a new
// newest candle.
func mergeOpen(candles []storedCandle, open storedCandle, g granularity, count int) ([]storedCandle, error) {
	b := open.bucket.Truncate(g.width)
	if len(candles) > 0 && candles[0].bucket.Equal(b) {
		c := &candles[0]
		for _, side := range []int{0, 4} {
			c.prices[side+1] = decimal.Max(c.prices[side+1], open.prices[side+1])
			c.prices[side+2] = decimal.Min(c.prices[side+2], open.prices[side+2])
			c.prices[side+3] = open.prices[side+3]
		}
		c.volume += open.volume
		return candles, nil
	}
	if len(candles) > 0 && candles[0].bucket.After(b) {
		return nil, fmt.Errorf("%w: S5 candle %s not rolled up precedes the %s rollup of %s", errCandlesInconsistent,
			open.bucket.Format(time.RFC3339), g.code, candles[0].bucket.Format(time.RFC3339))
	}
	open.bucket = b
	candles = slices.Insert(candles, 0, open)
	return candles[:min(len(candles), count)], nil
}

// GetCandles returns the latest candles of a pair, oldest first.
func (s *candleServer) GetCandles(ctx context.Context, req *ratesv1.GetCandlesRequest) (*ratesv1.GetCandlesResponse, error) {
	spec, err := fx.Lookup(fx.Pair(req.GetPair()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	g, ok := granularityOf(req.GetGranularity())
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "granularity %s is not served", req.GetGranularity())
	}
	if req.GetCount() < 1 || req.GetCount() > CandleCountMax {
		return nil, status.Errorf(codes.InvalidArgument, "count must be 1 to %d, not %d", CandleCountMax, req.GetCount())
	}
	candles, err := s.k.candles(ctx, spec, g, int(req.GetCount()))
	if errors.Is(err, errCandlesInconsistent) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &ratesv1.GetCandlesResponse{Pair: string(spec.Pair), Granularity: g.proto, Candles: candles}, nil
}

func (k *Keeper) candles(ctx context.Context, spec fx.PairSpec, g granularity, count int) ([]*ratesv1.Candle, error) {
	stored, pending, err := k.readCandles(ctx, spec, g, count)
	if err != nil {
		return nil, err
	}
	for _, p := range pending {
		if stored, err = mergeOpen(stored, p, g, count); err != nil {
			return nil, fmt.Errorf("candles of %s: %w", spec.Pair, err)
		}
	}
	now := k.cfg.Now()
	out := make([]*ratesv1.Candle, 0, len(stored))
	for _, c := range slices.Backward(stored) {
		f := make([]string, len(c.prices))
		for i, p := range c.prices {
			f[i] = spec.FormatPrice(p)
		}
		out = append(out, &ratesv1.Candle{Time: timestamppb.New(c.bucket),
			Bid:    &ratesv1.OHLC{Open: f[0], High: f[1], Low: f[2], Close: f[3]},
			Ask:    &ratesv1.OHLC{Open: f[4], High: f[5], Low: f[6], Close: f[7]},
			Volume: c.volume, Complete: !c.bucket.Add(g.width).After(now)})
	}
	return out, nil
}

// readCandles reads the stored candles of granularity g (newest first) and, when g is wider than S5,
// the pair's S5 candles not yet rolled up (oldest first).
func (k *Keeper) readCandles(ctx context.Context, spec fx.PairSpec, g granularity, count int) (stored, pending []storedCandle, err error) {
	var rows pgx.Rows
	if g.code == s5.code {
		rows, err = k.pool.Query(ctx, selectS5CandlesSQL, string(spec.Pair), count)
	} else {
		rows, err = k.pool.Query(ctx, selectRollupsSQL, string(spec.Pair), g.code, count)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("query candles: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			code string
			c    storedCandle
			p    [8]string
		)
		if err := rows.Scan(&code, &c.bucket, &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &c.volume); err != nil {
			return nil, nil, fmt.Errorf("scan candle: %w", err)
		}
		for i, v := range p {
			if c.prices[i], err = decimal.NewFromString(v); err != nil {
				return nil, nil, fmt.Errorf("stored candle price %q: %w", v, err)
			}
		}
		if code != g.code {
			pending = append(pending, c)
			continue
		}
		stored = append(stored, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("query candles: %w", err)
	}
	return stored, pending, nil
}
