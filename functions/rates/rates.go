// Package rates is the rate API for viewers and internal consumers: every replica tails the rates
// topic directly (all partitions, no shared consumer group), keeps the newest rate of every pair in
// memory by the ratekeeper's strictly-newer rule, and serves it pre-serialized — REST with ETags,
// Server-Sent Events and gRPC streams conflated per client, candles proxied from the ratekeeper's gRPC
// read path, and a live rate board at /. A cold-started replica reports ready only once it holds a
// rate for every pair it serves: from its tail of the topic, or, for a pair quiet for longer than the
// tail reaches back, the last rate the ratekeeper processed.
package rates

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Defaults of Config.
const (
	defaultStaleAfter        = 5 * time.Second
	defaultConflateInterval  = 250 * time.Millisecond
	defaultHeartbeatInterval = 5 * time.Second
	defaultBackfillRecords   = 2000
	defaultStreamClientsMax  = 20_000
	// defaultWatchClientsMax is small: WatchRates serves internal consumers (the ledger's watcher).
	defaultWatchClientsMax = 256
	// The tradeable flags are re-evaluated every staleSweepIntervalMs (StaleAfter/staleSweepDivisor
	// when that is shorter, never under staleSweepIntervalMinMs), so a flag flips at most that late.
	// A sweep only reads the snapshot's entries (at most 50) unless one flips.
	staleSweepIntervalMs    = 50
	staleSweepIntervalMinMs = 5
	staleSweepDivisor       = 10
)

// Config is what the rates service needs to know; the zero value of each optional field means its
// default.
type Config struct {
	// Brokers to tail; empty means no tailing (rates are then fed with Apply, as in some tests).
	Brokers []string
	// Topic is the rates topic (default eventing.TopicRates).
	Topic string
	// Pairs are the pairs served (default every pair of eventing/fx); readiness waits for all of them.
	Pairs []fx.Pair
	// StaleAfter is how long a pair may go without a rate before it is reported not tradeable
	// (default 5s), measured from the feeder's receipt of the rate.
	StaleAfter time.Duration
	// ConflateInterval is the shortest gap between two stream updates of one pair (default 250ms).
	ConflateInterval time.Duration
	// HeartbeatInterval is how often an SSE stream gets a heartbeat event (default 5s).
	HeartbeatInterval time.Duration
	// BackfillRecords is how far back in each partition a starting replica reads (default 2000
	// records, about 20 s at 1,000 rates/s over 10 partitions).
	BackfillRecords int
	// StreamClientsMax caps concurrent SSE stream clients per replica (default 20,000).
	StreamClientsMax int
	// WatchClientsMax caps concurrent gRPC WatchRates streams per replica (default 256), apart from
	// StreamClientsMax, so public SSE viewers cannot lock the internal price feed out, nor it them.
	WatchClientsMax int
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Topic == "" {
		c.Topic = eventing.TopicRates
	}
	if len(c.Pairs) == 0 {
		for _, s := range fx.Pairs() {
			c.Pairs = append(c.Pairs, s.Pair)
		}
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = defaultStaleAfter
	}
	if c.ConflateInterval <= 0 {
		c.ConflateInterval = defaultConflateInterval
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = defaultHeartbeatInterval
	}
	if c.BackfillRecords <= 0 {
		c.BackfillRecords = defaultBackfillRecords
	}
	if c.StreamClientsMax <= 0 {
		c.StreamClientsMax = defaultStreamClientsMax
	}
	if c.WatchClientsMax <= 0 {
		c.WatchClientsMax = defaultWatchClientsMax
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Service is the rates function: Handler (REST, SSE and the board), RegisterGRPC (RateService), Run
// (tailing, conflation, staleness) and Ready (the readiness check).
type Service struct {
	cfg     Config
	book    *book
	hub     *hub
	tail    *tailer
	candles ratesv1.CandleServiceClient
	log     *zap.SugaredLogger
	metrics *metrics
	handler http.Handler
	// noRate holds, once seeding has asked the ratekeeper, the served pairs with no rate to be had
	// (see seedQuietPairs); nil before.
	noRate atomic.Pointer[map[fx.Pair]bool]
}

// New returns a rates service. candles is the ratekeeper's CandleService; nil answers the candles
// endpoint with 503.
func New(cfg Config, candles ratesv1.CandleServiceClient, log *zap.SugaredLogger, reg prometheus.Registerer) (*Service, error) {
	if log == nil || reg == nil {
		return nil, errors.New("rates: logger and registry are required")
	}
	cfg = cfg.withDefaults()
	b, err := newBook(cfg.Pairs, cfg.StaleAfter, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("rates: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("rates: %w", err)
	}
	s := &Service{cfg: cfg, book: b, candles: candles, log: log, metrics: m}
	s.hub = newHub(b, cfg, m)
	if len(cfg.Brokers) > 0 {
		s.tail = newTailer(cfg, s.Apply, log, m)
	}
	s.handler = s.routes()
	return s, nil
}

// Routes are the ServeMux patterns of the public API, for kawase dev's single port.
func (s *Service) Routes() []string {
	return []string{"/v1/rates", "/v1/rates/", "GET /{$}"}
}

// Handler serves the REST API, the SSE stream and the rate board.
func (s *Service) Handler() http.Handler { return s.handler }

// RegisterGRPC registers the RateService on gs.
func (s *Service) RegisterGRPC(gs *grpc.Server) {
	ratesv1.RegisterRateServiceServer(gs, &rateServer{s: s})
}

// Run tails the rates topic, publishes conflated stream updates and keeps the tradeable flags
// current until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	fns := []func(context.Context) error{s.hub.run, s.sweepStale}
	if s.tail != nil {
		fns = append(fns, s.tail.run)
		if s.candles != nil {
			fns = append(fns, s.seedQuietPairs)
		}
	}
	return observe.RunAll(ctx, fns...)
}

// Apply records a rate by the strictly-newer rule, as the tailer does for every record; it reports
// whether the rate became the pair's current one.
func (s *Service) Apply(r *eventing.RateV1) bool {
	res, e := s.book.apply(r)
	s.metrics.applied[res].Inc()
	if e != nil && !r.ReceivedAt.IsZero() {
		s.metrics.freshness.Observe(s.cfg.Now().Sub(r.ReceivedAt).Seconds())
	}
	return res == appliedAccepted
}

// Ready fails until this replica has caught up with every partition as it was at start-up and holds
// a rate for every pair it serves that has one to be had (see seedQuietPairs), so it never takes
// traffic with a partial snapshot.
func (s *Service) Ready(context.Context) error {
	if s.tail != nil {
		if n := s.tail.behind(); n > 0 {
			return fmt.Errorf("catching up: %d partition(s) behind", n)
		}
	}
	if missing := s.withRateToBeHad(s.book.missing()); len(missing) > 0 {
		names := make([]string, len(missing))
		for i, p := range missing {
			names[i] = string(p)
		}
		return fmt.Errorf("no rate yet for %d pair(s): %s", len(missing), strings.Join(names, ","))
	}
	return nil
}

// staleSweepInterval is how often the tradeable flags are re-evaluated for a staleness limit of
// staleAfter.
func staleSweepInterval(staleAfter time.Duration) time.Duration {
	return max(min(staleSweepIntervalMs*time.Millisecond, staleAfter/staleSweepDivisor), staleSweepIntervalMinMs*time.Millisecond)
}

func (s *Service) sweepStale(ctx context.Context) error {
	t := time.NewTicker(staleSweepInterval(s.cfg.StaleAfter))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			s.book.sweep()
		}
	}
}
