package ratekeeper

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
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

// granularities are the candle widths served. Only S5 candles are written for every accepted tick;
// an S5 candle is rolled up into its M1, M5 and H1 candles once it is closed, that is in the
// transaction of the pair's first tick of a later S5 bucket. So, per pair, every stored S5 candle but
// the latest is in the wider candles, and the latest (the open one) is merged into them when read.
// That writes about one row per tick instead of four (a quarter of the candle upserts, which were
// the ratekeeper's largest database cost).
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
// collects the S5 candles the batch closes. Accepted ticks of a pair are strictly newer than every
// earlier one, so a batch's close is the candle's close, and a pair's S5 candles close in order.
type candleSet struct {
	keys   []candleKey
	aggs   map[candleKey]*candleAgg
	closed []candleKey
}

func newCandleSet() *candleSet { return &candleSet{aggs: map[candleKey]*candleAgg{}} }

// add adds accepted tick r; prev is the provider time of the pair's previous accepted tick, if any
// (had), whose S5 candle r closes when r starts a later one.
func (c *candleSet) add(r *eventing.RateV1, prev time.Time, had bool) {
	k := candleKey{pair: r.Pair, code: s5.code, bucket: r.ProviderTime.UTC().Truncate(s5.width)}
	if had {
		if p := prev.UTC().Truncate(s5.width); p.Before(k.bucket) {
			c.closed = append(c.closed, candleKey{pair: r.Pair, code: s5.code, bucket: p})
		}
	}
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

const upsertCandlesSQL = `INSERT INTO ratekeeper.candles AS c (pair, granularity, bucket,
  open_bid, high_bid, low_bid, close_bid, open_ask, high_ask, low_ask, close_ask, volume)
SELECT t.pair, t.g, t.b, t.ob::numeric, t.hb::numeric, t.lb::numeric, t.cb::numeric,
  t.oa::numeric, t.ha::numeric, t.la::numeric, t.ca::numeric, t.v
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
  $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[]) AS t(pair, g, b, ob, hb, lb, cb, oa, ha, la, ca, v)
ON CONFLICT (pair, granularity, bucket) DO UPDATE SET
  high_bid = GREATEST(c.high_bid, EXCLUDED.high_bid), low_bid = LEAST(c.low_bid, EXCLUDED.low_bid),
  close_bid = EXCLUDED.close_bid,
  high_ask = GREATEST(c.high_ask, EXCLUDED.high_ask), low_ask = LEAST(c.low_ask, EXCLUDED.low_ask),
  close_ask = EXCLUDED.close_ask,
  volume = c.volume + EXCLUDED.volume`

// rollupCandlesSQL merges closed S5 candles ($1 pair, $2 bucket) into the wider candles ($3 code, $4
// bucket) that hold them. It runs after the batch's S5 upsert, so a candle the batch both wrote and
// closed is rolled up whole; S5 candles of one wider candle are combined first, in time order.
const rollupCandlesSQL = `INSERT INTO ratekeeper.candles AS c (pair, granularity, bucket,
  open_bid, high_bid, low_bid, close_bid, open_ask, high_ask, low_ask, close_ask, volume)
SELECT r.pair, r.g, r.b,
  (array_agg(s.open_bid ORDER BY s.bucket))[1], max(s.high_bid), min(s.low_bid), (array_agg(s.close_bid ORDER BY s.bucket DESC))[1],
  (array_agg(s.open_ask ORDER BY s.bucket))[1], max(s.high_ask), min(s.low_ask), (array_agg(s.close_ask ORDER BY s.bucket DESC))[1],
  sum(s.volume)::bigint
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[]) AS r(pair, s5, g, b)
JOIN ratekeeper.candles s ON s.pair = r.pair AND s.granularity = 'S5' AND s.bucket = r.s5
GROUP BY r.pair, r.g, r.b
ON CONFLICT (pair, granularity, bucket) DO UPDATE SET
  high_bid = GREATEST(c.high_bid, EXCLUDED.high_bid), low_bid = LEAST(c.low_bid, EXCLUDED.low_bid),
  close_bid = EXCLUDED.close_bid,
  high_ask = GREATEST(c.high_ask, EXCLUDED.high_ask), low_ask = LEAST(c.low_ask, EXCLUDED.low_ask),
  close_ask = EXCLUDED.close_ask,
  volume = c.volume + EXCLUDED.volume`

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
	if len(c.closed) == 0 {
		return
	}
	n = len(c.closed) * len(rollups)
	rPairs, rS5, rCodes, rBuckets := make([]string, 0, n), make([]time.Time, 0, n), make([]string, 0, n), make([]time.Time, 0, n)
	for _, k := range c.closed {
		for _, g := range rollups {
			rPairs, rS5 = append(rPairs, string(k.pair)), append(rS5, k.bucket)
			rCodes, rBuckets = append(rCodes, g.code), append(rBuckets, k.bucket.Truncate(g.width))
		}
	}
	b.Queue(rollupCandlesSQL, rPairs, rS5, rCodes, rBuckets)
}

// candleServer is the CandleService: the ratekeeper's read path for its candles.
type candleServer struct {
	ratesv1.UnimplementedCandleServiceServer
	k *Keeper
}

// selectCandlesSQL reads the latest $3 stored candles of pair $1 at granularity $2, newest first,
// and, when $2 is wider than S5, then the pair's latest S5 candle: the open one, not yet rolled up.
// One statement, so both come from one snapshot.
const selectCandlesSQL = `(SELECT granularity, bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
  open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
FROM ratekeeper.candles WHERE pair = $1 AND granularity = $2 ORDER BY bucket DESC LIMIT $3)
UNION ALL
(SELECT granularity, bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
  open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
FROM ratekeeper.candles WHERE pair = $1 AND granularity = 'S5' AND $2 <> 'S5' ORDER BY bucket DESC LIMIT 1)`

// storedCandle is one candle as read: prices in the order open, high, low, close of bid, then ask.
type storedCandle struct {
	bucket time.Time
	prices [8]decimal.Decimal
	volume int64
}

// mergeOpen merges the open S5 candle into candles (of granularity g, newest first, at most count):
// into the newest when it is the wider candle that holds open, else as a new newest candle.
func mergeOpen(candles []storedCandle, open storedCandle, g granularity, count int) []storedCandle {
	b := open.bucket.Truncate(g.width)
	if len(candles) > 0 && candles[0].bucket.Equal(b) {
		c := &candles[0]
		for _, side := range []int{0, 4} {
			c.prices[side+1] = decimal.Max(c.prices[side+1], open.prices[side+1])
			c.prices[side+2] = decimal.Min(c.prices[side+2], open.prices[side+2])
			c.prices[side+3] = open.prices[side+3]
		}
		c.volume += open.volume
		return candles
	}
	if len(candles) > 0 && candles[0].bucket.After(b) {
		// Cannot happen: a pair's S5 candles are rolled up in time order, the latest last.
		return candles
	}
	open.bucket = b
	candles = slices.Insert(candles, 0, open)
	return candles[:min(len(candles), count)]
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
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &ratesv1.GetCandlesResponse{Pair: string(spec.Pair), Granularity: g.proto, Candles: candles}, nil
}

func (k *Keeper) candles(ctx context.Context, spec fx.PairSpec, g granularity, count int) ([]*ratesv1.Candle, error) {
	stored, open, err := k.readCandles(ctx, spec, g, count)
	if err != nil {
		return nil, err
	}
	if open != nil {
		stored = mergeOpen(stored, *open, g, count)
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

// readCandles reads the stored candles (newest first) and, for a granularity wider than S5, the
// pair's open S5 candle (nil when the pair has none).
func (k *Keeper) readCandles(ctx context.Context, spec fx.PairSpec, g granularity, count int) ([]storedCandle, *storedCandle, error) {
	rows, err := k.pool.Query(ctx, selectCandlesSQL, string(spec.Pair), g.code, count)
	if err != nil {
		return nil, nil, fmt.Errorf("query candles: %w", err)
	}
	defer rows.Close()
	var (
		stored []storedCandle
		open   *storedCandle
	)
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
			open = &c
			continue
		}
		stored = append(stored, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("query candles: %w", err)
	}
	return stored, open, nil
}
