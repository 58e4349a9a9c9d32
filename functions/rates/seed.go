package rates

import (
	"context"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Limits of seeding quiet pairs from the ratekeeper. seedPairsPerCallMax is the ratekeeper's limit
// on the pairs of one GetLastTicks call.
const (
	seedPollMs          = 50
	seedCallTimeoutMs   = 3_000
	seedBackoffMs       = 250
	seedBackoffMaxMs    = 5_000
	seedPairsPerCallMax = 256
)

// seedQuietPairs completes a cold start's snapshot. The tail reads only the last BackfillRecords of
// each partition, so a pair quiet for longer is not in it; once the tail has caught up, every pair
// still without a rate takes the last one the ratekeeper processed (through its CandleService, never
// its tables), by the same strictly-newer rule, so a rate the tail delivers meanwhile wins. A pair the
// ratekeeper has no rate for has never had one: it is recorded as such and no longer holds back
// readiness. A failed call is retried with a capped backoff until it succeeds or ctx ends
// (deliberately unbounded: the replica stays unready, which is what the retries are for). Then it
// waits for ctx, since RunAll ends every function when one returns.
func (s *Service) seedQuietPairs(ctx context.Context) error {
	if err := s.waitCaughtUp(ctx); err != nil {
		return err
	}
	backoff := seedBackoffMs * time.Millisecond
	for {
		neverQuoted, err := s.seedOnce(ctx, s.book.missing())
		if err == nil {
			s.neverQuoted.Store(&neverQuoted)
			break
		}
		s.metrics.seedErrors.Inc()
		s.log.Warnw("cannot take the last rates of quiet pairs from the ratekeeper yet; retrying", "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, seedBackoffMaxMs*time.Millisecond)
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *Service) waitCaughtUp(ctx context.Context) error {
	t := time.NewTicker(seedPollMs * time.Millisecond)
	defer t.Stop()
	for s.tail.behind() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// seedOnce applies the ratekeeper's last tick of each of missing and returns those it has none for.
func (s *Service) seedOnce(ctx context.Context, missing []fx.Pair) (map[fx.Pair]bool, error) {
	neverQuoted := make(map[fx.Pair]bool, len(missing))
	for len(missing) > 0 {
		chunk := missing[:min(len(missing), seedPairsPerCallMax)]
		missing = missing[len(chunk):]
		names := make([]string, len(chunk))
		for i, p := range chunk {
			names[i] = string(p)
			neverQuoted[p] = true
		}
		callCtx, cancel := context.WithTimeout(ctx, seedCallTimeoutMs*time.Millisecond)
		resp, err := s.candles.GetLastTicks(callCtx, &ratesv1.GetLastTicksRequest{Pairs: names})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("get last ticks: %w", err)
		}
		for _, tick := range resp.GetTicks() {
			r, err := rateOfTick(tick)
			if err != nil {
				return nil, err
			}
			if !neverQuoted[r.Pair] {
				return nil, fmt.Errorf("last ticks: %s was not asked for", r.Pair)
			}
			delete(neverQuoted, r.Pair)
			if res, _ := s.book.apply(r); res == appliedAccepted {
				s.metrics.seeded.Inc()
			}
		}
	}
	return neverQuoted, nil
}

// rateOfTick makes a rate of the ratekeeper's tick. Its freshness is the feeder's receipt, or the
// provider's time where that is unknown, so a rate quiet for longer than the staleness limit is served
// but not tradeable.
func rateOfTick(t *ratesv1.Tick) (*eventing.RateV1, error) {
	bid, err := decimal.NewFromString(t.GetBid())
	if err != nil {
		return nil, fmt.Errorf("last tick of %s: bid %q: %w", t.GetPair(), t.GetBid(), err)
	}
	ask, err := decimal.NewFromString(t.GetAsk())
	if err != nil {
		return nil, fmt.Errorf("last tick of %s: ask %q: %w", t.GetPair(), t.GetAsk(), err)
	}
	if t.GetTime() == nil {
		return nil, fmt.Errorf("last tick of %s: no provider time", t.GetPair())
	}
	r := &eventing.RateV1{Pair: fx.Pair(t.GetPair()), Bid: bid, Ask: ask, ProviderTime: t.GetTime().AsTime(),
		QuoteID: t.GetQuoteId(), Epoch: t.GetEpoch(), ReceivedAt: t.GetTime().AsTime()}
	if t.GetReceivedAt() != nil {
		r.ReceivedAt = t.GetReceivedAt().AsTime()
	}
	return r, nil
}

// quietPairsUnknown returns the pairs of missing not known to have never had a rate: every one until
// seeding has asked the ratekeeper (always, when there is no ratekeeper to ask).
func (s *Service) quietPairsUnknown(missing []fx.Pair) []fx.Pair {
	never := s.neverQuoted.Load()
	if never == nil {
		return missing
	}
	var out []fx.Pair
	for _, p := range missing {
		if !(*never)[p] {
			out = append(out, p)
		}
	}
	return out
}
