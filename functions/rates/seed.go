package rates

import (
	"context"
	"fmt"
	"slices"
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
// its tables), by the same strictly-newer rule, so a rate the tail delivers meanwhile wins. A pair
// with no rate to be had (never quoted, its last tick lost, or the ratekeeper's answer for it
// unusable) is recorded as such and no longer holds back readiness: it is served as unavailable until
// its next rate, rather than keeping the replica out of service. A failed call is retried with a
// capped backoff until it succeeds or ctx ends (deliberately unbounded: the replica stays unready,
// which is what the retries are for). Then it waits for ctx, since RunAll ends every function when one
// returns.
func (s *Service) seedQuietPairs(ctx context.Context) error {
	if err := s.waitCaughtUp(ctx); err != nil {
		return err
	}
	backoff := seedBackoffMs * time.Millisecond
	for {
		noRate, err := s.seedOnce(ctx, s.book.missing())
		if err == nil {
			s.noRate.Store(&noRate)
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

// seedOnce asks the ratekeeper for the last rate of each of missing, applies those it can and returns
// the pairs with no rate to be had. It fails only when a call fails: an answer that cannot be used
// would be the same on every retry, so the pair it concerns is counted, logged and left without a rate.
func (s *Service) seedOnce(ctx context.Context, missing []fx.Pair) (map[fx.Pair]bool, error) {
	noRate := make(map[fx.Pair]bool, len(missing))
	for _, p := range missing {
		noRate[p] = true
	}
	for len(missing) > 0 {
		chunk := missing[:min(len(missing), seedPairsPerCallMax)]
		missing = missing[len(chunk):]
		names := make([]string, len(chunk))
		for i, p := range chunk {
			names[i] = string(p)
		}
		callCtx, cancel := context.WithTimeout(ctx, seedCallTimeoutMs*time.Millisecond)
		resp, err := s.candles.GetLastTicks(callCtx, &ratesv1.GetLastTicksRequest{Pairs: names})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("get last ticks: %w", err)
		}
		if len(resp.GetPairsWithoutTick()) > 0 {
			s.log.Warnw("the ratekeeper has processed rates of these pairs but no longer holds the last one; they are unavailable until their next rate",
				"pairs", resp.GetPairsWithoutTick())
		}
		seen := make(map[fx.Pair]bool, len(resp.GetTicks()))
		for _, tick := range resp.GetTicks() {
			if err := s.seedTick(tick, chunk, seen); err != nil {
				s.metrics.seedRefused.Inc()
				s.log.Warnw("a last rate from the ratekeeper is unusable; the pair is unavailable until its next rate", "error", err)
			}
		}
		for p := range seen {
			delete(noRate, p)
		}
	}
	return noRate, nil
}

// seedTick applies one of the ratekeeper's ticks if it is for a pair asked for (in chunk) and not seen
// before in this answer, reads as a rate and passes the same range check as the tail's rates.
func (s *Service) seedTick(tick *ratesv1.Tick, chunk []fx.Pair, seen map[fx.Pair]bool) error {
	pair := fx.Pair(tick.GetPair())
	if !slices.Contains(chunk, pair) || seen[pair] {
		return fmt.Errorf("last ticks: %q was not asked for, or came twice", tick.GetPair())
	}
	r, err := rateOfTick(tick)
	if err != nil {
		return err
	}
	if err := r.CheckRange(s.cfg.Now()); err != nil {
		return fmt.Errorf("last tick of %s: %w", pair, err)
	}
	seen[pair] = true
	if res, _ := s.book.seed(r, tick.GetEpochSeen()); res == appliedAccepted {
		s.metrics.seeded.Inc()
	}
	return nil
}

// rateOfTick makes a rate of the ratekeeper's tick. Its freshness is the feeder's receipt; a tick
// without one is never fresh (book.seed), so a rate quiet for longer than the staleness limit is
// served but not tradeable.
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
		QuoteID: t.GetQuoteId(), Epoch: t.GetEpoch()}
	if t.GetReceivedAt() != nil {
		r.ReceivedAt = t.GetReceivedAt().AsTime()
	}
	return r, nil
}

// withRateToBeHad returns the pairs of missing not known to have no rate to be had: every one until
// seeding has asked the ratekeeper (always, when there is no ratekeeper to ask).
func (s *Service) withRateToBeHad(missing []fx.Pair) []fx.Pair {
	noRate := s.noRate.Load()
	if noRate == nil {
		return missing
	}
	var out []fx.Pair
	for _, p := range missing {
		if !(*noRate)[p] {
			out = append(out, p)
		}
	}
	return out
}
