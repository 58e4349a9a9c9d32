package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/eventing/fx"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Quote is the current top of book of one pair, as the ledger prices orders and margin from it.
type Quote struct {
	Pair fx.Pair
	Bid  decimal.Decimal
	Ask  decimal.Decimal
	// Time is the provider's time of the quote; the ledger refuses to trade on a quote older than
	// Config.QuoteAgeMax.
	Time time.Time
	// Tradeable is false when the rates service marks the pair stale or halted.
	Tradeable bool
	// QuoteID is the provider's id of the quote, recorded with the fills priced from it.
	QuoteID string
}

// Mid is the middle of the quote, used to convert amounts between currencies.
func (q Quote) Mid() decimal.Decimal {
	return q.Bid.Add(q.Ask).Div(decimal.NewFromInt(2))
}

// PriceSource is the seam the ledger prices from: the latest quote of a pair, and whether there is
// one. In production it is a QuoteBook fed by the rates service's gRPC stream (FollowRates).
type PriceSource interface {
	Quote(pair fx.Pair) (Quote, bool)
}

// QuoteBook is an in-memory PriceSource that keeps the latest quote of every pair and lets watchers
// wait for the next change.
type QuoteBook struct {
	mu      sync.RWMutex
	quotes  map[fx.Pair]Quote
	changed chan struct{}
}

// NewQuoteBook returns an empty book.
func NewQuoteBook() *QuoteBook {
	return &QuoteBook{quotes: make(map[fx.Pair]Quote), changed: make(chan struct{})}
}

// Quote returns the latest quote of pair.
func (b *QuoteBook) Quote(pair fx.Pair) (Quote, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	q, ok := b.quotes[pair]
	return q, ok
}

// Pairs lists the pairs the book has a quote of, sorted.
func (b *QuoteBook) Pairs() []fx.Pair {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]fx.Pair, 0, len(b.quotes))
	for p := range b.quotes {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Ready reports whether the book holds any quote: a readiness check, so a ledger that has just
// started takes commands only once it can price them (instead of rejecting them for want of a price).
func (b *QuoteBook) Ready(context.Context) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if len(b.quotes) == 0 {
		return errors.New("no quotes from the rates service yet")
	}
	return nil
}

// Set records quotes and wakes every watcher of Changed.
func (b *QuoteBook) Set(quotes ...Quote) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, q := range quotes {
		b.quotes[q.Pair] = q
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next Set.
func (b *QuoteBook) Changed() <-chan struct{} {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.changed
}

// Limits of following the rates stream.
const (
	followBackoffMinMs = 100
	followBackoffMaxMs = 5_000
)

// FollowRates keeps book up to date from the rates service's WatchRates stream until ctx ends. A
// broken stream is reopened with bounded exponential backoff (the snapshot it starts with refreshes
// every pair); while it is down the quotes age, and the ledger refuses to trade on stale ones.
func FollowRates(ctx context.Context, client ratesv1.RateServiceClient, book *QuoteBook, log *zap.SugaredLogger) error {
	backoff := followBackoffMinMs * time.Millisecond
	for {
		started := time.Now()
		err := followOnce(ctx, client, book)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > followBackoffMaxMs*time.Millisecond {
			backoff = followBackoffMinMs * time.Millisecond
		}
		log.Warnw("rates stream broken; reconnecting", "error", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, followBackoffMaxMs*time.Millisecond)
	}
}

func followOnce(ctx context.Context, client ratesv1.RateServiceClient, book *QuoteBook) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.WatchRates(ctx, &ratesv1.WatchRatesRequest{})
	if err != nil {
		return fmt.Errorf("watch rates: %w", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive rates: %w", err)
		}
		quotes := make([]Quote, 0, len(msg.GetRates()))
		for _, r := range msg.GetRates() {
			q, err := quoteFromProto(r)
			if err != nil {
				return err
			}
			quotes = append(quotes, q)
		}
		book.Set(quotes...)
	}
}

// errBadRate marks a rate from the rates service that cannot be a quote.
var errBadRate = errors.New("bad rate from the rates service")

func quoteFromProto(r *ratesv1.Rate) (Quote, error) {
	spec, err := fx.Lookup(fx.Pair(r.GetPair()))
	if err != nil {
		return Quote{}, fmt.Errorf("%w: %w", errBadRate, err)
	}
	bid, errBid := decimal.NewFromString(r.GetBid())
	ask, errAsk := decimal.NewFromString(r.GetAsk())
	if errBid != nil || errAsk != nil || !bid.IsPositive() || bid.GreaterThan(ask) {
		return Quote{}, fmt.Errorf("%w: %s bid %q ask %q", errBadRate, spec.Pair, r.GetBid(), r.GetAsk())
	}
	return Quote{Pair: spec.Pair, Bid: bid, Ask: ask, Time: r.GetTime().AsTime(), Tradeable: r.GetTradeable(),
		QuoteID: r.GetQuoteId()}, nil
}

// QuoteToProto renders a quote as the rates service's Rate message (for test servers and tools that
// speak the rates API).
func QuoteToProto(q Quote) *ratesv1.Rate {
	return &ratesv1.Rate{Pair: string(q.Pair), Bid: q.Bid.String(), Ask: q.Ask.String(),
		Spread: q.Ask.Sub(q.Bid).String(), Time: timestamppb.New(q.Time), Tradeable: q.Tradeable, QuoteId: q.QuoteID}
}
