package ratekeeper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/eventing/fx"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// lastTicksPairsMax bounds the pair list of one GetLastTicks call (a pair may be named once).
const lastTicksPairsMax = 256

// selectLastTicksSQL reads, for each pair of $1 the ratekeeper has processed a rate of, its last
// tick: the one whose n is the mark's count (prune keeps it, but a prune before it did may have
// deleted it: then the tick's columns are NULL) and the highest epoch seen.
const selectLastTicksSQL = `SELECT m.pair, t.bid::text, t.ask::text, t.provider_ns, t.quote_id, t.epoch, t.received_at, m.epoch
FROM ratekeeper.marks m LEFT JOIN ratekeeper.ticks t ON t.pair = m.pair AND t.n = m.ticks
WHERE m.pair = ANY($1::text[]) AND m.provider_ns IS NOT NULL ORDER BY m.pair`

// errTickUnreadable: a stored tick cannot be formatted; a retry will not help.
var errTickUnreadable = errors.New("stored tick unreadable")

// GetLastTicks returns the last rate processed for each requested pair that has one.
func (s *candleServer) GetLastTicks(ctx context.Context, req *ratesv1.GetLastTicksRequest) (*ratesv1.GetLastTicksResponse, error) {
	pairs, err := lastTicksPairs(req.GetPairs())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp, err := s.k.lastTicks(ctx, pairs)
	if errors.Is(err, errTickUnreadable) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return resp, nil
}

// lastTicksPairs checks a request's pair list; an empty one stands for every pair of the catalogue.
func lastTicksPairs(names []string) ([]string, error) {
	if len(names) > lastTicksPairsMax {
		return nil, fmt.Errorf("at most %d pairs, not %d", lastTicksPairsMax, len(names))
	}
	if len(names) == 0 {
		specs := fx.Pairs()
		out := make([]string, len(specs))
		for i, spec := range specs {
			out[i] = string(spec.Pair)
		}
		return out, nil
	}
	seen := make(map[fx.Pair]bool, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		spec, err := fx.Lookup(fx.Pair(n))
		if err != nil {
			return nil, err
		}
		if seen[spec.Pair] {
			return nil, fmt.Errorf("pair %s named twice", spec.Pair)
		}
		seen[spec.Pair] = true
		out = append(out, string(spec.Pair))
	}
	return out, nil
}

func (k *Keeper) lastTicks(ctx context.Context, pairs []string) (*ratesv1.GetLastTicksResponse, error) {
	rows, err := k.pool.Query(ctx, selectLastTicksSQL, pairs)
	if err != nil {
		return nil, fmt.Errorf("query last ticks: %w", err)
	}
	defer rows.Close()
	out := &ratesv1.GetLastTicksResponse{}
	for rows.Next() {
		var (
			pair                  string
			bid, ask, quoteID     pgtype.Text
			providerNs, tickEpoch pgtype.Int8
			receivedAt            pgtype.Timestamptz
			epochSeen             int64
		)
		if err := rows.Scan(&pair, &bid, &ask, &providerNs, &quoteID, &tickEpoch, &receivedAt, &epochSeen); err != nil {
			return nil, fmt.Errorf("scan last tick: %w", err)
		}
		if !providerNs.Valid {
			out.PairsWithoutTick = append(out.PairsWithoutTick, pair)
			continue
		}
		tick, err := tickProto(pair, bid.String, ask.String, providerNs.Int64, quoteID.String, tickEpoch.Int64, receivedAt)
		if err != nil {
			return nil, err
		}
		tick.EpochSeen = max(epochSeen, tick.Epoch)
		out.Ticks = append(out.Ticks, tick)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query last ticks: %w", err)
	}
	return out, nil
}

// tickProto formats a stored tick at its pair's precision; the provider time comes from provider_ns,
// exact to the nanosecond, so a consumer compares it with the same rate read off the topic as equal.
func tickProto(pair, bid, ask string, providerNs int64, quoteID string, epoch int64, receivedAt pgtype.Timestamptz) (*ratesv1.Tick, error) {
	spec, err := fx.Lookup(fx.Pair(pair))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errTickUnreadable, err)
	}
	b, err := decimal.NewFromString(bid)
	if err != nil {
		return nil, fmt.Errorf("%w: bid %q of %s: %w", errTickUnreadable, bid, pair, err)
	}
	a, err := decimal.NewFromString(ask)
	if err != nil {
		return nil, fmt.Errorf("%w: ask %q of %s: %w", errTickUnreadable, ask, pair, err)
	}
	t := &ratesv1.Tick{Pair: pair, Bid: spec.FormatPrice(b), Ask: spec.FormatPrice(a),
		Time: timestamppb.New(time.Unix(0, providerNs).UTC()), QuoteId: quoteID, Epoch: epoch}
	if receivedAt.Valid {
		t.ReceivedAt = timestamppb.New(receivedAt.Time)
	}
	return t, nil
}
