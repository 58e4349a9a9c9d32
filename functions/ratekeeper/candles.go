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

// granularities are maintained for every accepted tick, in the same transaction.
var granularities = []granularity{
	{code: "S5", width: 5 * time.Second, proto: ratesv1.Granularity_GRANULARITY_S5},
	{code: "M1", width: time.Minute, proto: ratesv1.Granularity_GRANULARITY_M1},
	{code: "M5", width: 5 * time.Minute, proto: ratesv1.Granularity_GRANULARITY_M5},
	{code: "H1", width: time.Hour, proto: ratesv1.Granularity_GRANULARITY_H1},
}

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

// candleSet aggregates a batch's accepted ticks per candle, in order of first appearance. Accepted
// ticks of a pair are strictly newer than every earlier one, so a batch's close is the candle's close.
type candleSet struct {
	keys []candleKey
	aggs map[candleKey]*candleAgg
}

func newCandleSet() *candleSet { return &candleSet{aggs: map[candleKey]*candleAgg{}} }

func (c *candleSet) add(r *eventing.RateV1) {
	for _, g := range granularities {
		k := candleKey{pair: r.Pair, code: g.code, bucket: r.ProviderTime.UTC().Truncate(g.width)}
		a, ok := c.aggs[k]
		if !ok {
			c.keys = append(c.keys, k)
			c.aggs[k] = &candleAgg{openBid: r.Bid, highBid: r.Bid, lowBid: r.Bid, closeBid: r.Bid,
				openAsk: r.Ask, highAsk: r.Ask, lowAsk: r.Ask, closeAsk: r.Ask, volume: 1}
			continue
		}
		a.highBid, a.lowBid, a.closeBid = decimal.Max(a.highBid, r.Bid), decimal.Min(a.lowBid, r.Bid), r.Bid
		a.highAsk, a.lowAsk, a.closeAsk = decimal.Max(a.highAsk, r.Ask), decimal.Min(a.lowAsk, r.Ask), r.Ask
		a.volume++
	}
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

const selectCandlesSQL = `SELECT bucket, open_bid::text, high_bid::text, low_bid::text, close_bid::text,
  open_ask::text, high_ask::text, low_ask::text, close_ask::text, volume
FROM ratekeeper.candles WHERE pair = $1 AND granularity = $2 ORDER BY bucket DESC LIMIT $3`

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
	rows, err := k.pool.Query(ctx, selectCandlesSQL, string(spec.Pair), g.code, count)
	if err != nil {
		return nil, fmt.Errorf("query candles: %w", err)
	}
	defer rows.Close()
	now := k.cfg.Now()
	var out []*ratesv1.Candle
	for rows.Next() {
		var (
			bucket time.Time
			p      [8]string
			volume int64
		)
		if err := rows.Scan(&bucket, &p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &volume); err != nil {
			return nil, fmt.Errorf("scan candle: %w", err)
		}
		f, err := formatPrices(spec, p[:])
		if err != nil {
			return nil, err
		}
		out = append(out, &ratesv1.Candle{Time: timestamppb.New(bucket),
			Bid:    &ratesv1.OHLC{Open: f[0], High: f[1], Low: f[2], Close: f[3]},
			Ask:    &ratesv1.OHLC{Open: f[4], High: f[5], Low: f[6], Close: f[7]},
			Volume: volume, Complete: !bucket.Add(g.width).After(now)})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query candles: %w", err)
	}
	slices.Reverse(out)
	return out, nil
}

func formatPrices(spec fx.PairSpec, prices []string) ([]string, error) {
	out := make([]string, len(prices))
	for i, p := range prices {
		d, err := decimal.NewFromString(p)
		if err != nil {
			return nil, fmt.Errorf("stored candle price %q: %w", p, err)
		}
		out[i] = spec.FormatPrice(d)
	}
	return out, nil
}
