// Package trading is the trading function of kawase: the REST API through which clients open
// accounts, place, inspect and cancel orders and read their trades, positions and transactions.
//
// Trading owns no money. It authenticates (bearer tokens; an account token sees only its account,
// the admin token administers but cannot trade), limits (per-token rate, body and page sizes),
// deduplicates (Idempotency-Key, stored in the trading schema), and turns each order request into a
// kawase.order.command.v1 keyed by account on kawase.commands, which the ledger applies in order. It
// then waits up to SyncWait for the ledger's kawase.order.result.v1 (every replica tails every
// partition of kawase.order.results from the end, so the replica holding the request sees its result)
// and answers with the order's final state, or 202 with the order's URL. Reads go to the ledger's gRPC
// query service; trading never touches the ledger's tables.
//
// CloudEvent producers can place and cancel orders too: POST a kawase.order.request.v1 (binary or
// structured HTTP mode) to / or /v1/order-requests with the same bearer token; the event id is the
// idempotency key and the answer is a kawase.order.response.v1 CloudEvent (see events.go).
package trading

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema trading owns (API keys and idempotency records).
const Schema = "trading"

// Migrate brings the trading schema up to date.
func Migrate(ctx context.Context, databaseURL string) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("trading migrations: %w", err)
	}
	return pgdb.Migrate(ctx, databaseURL, Schema, sub)
}

// Defaults of Config.
const (
	defaultSyncWaitMs          = 2_000
	defaultRatePerSecond       = 200
	defaultRateBurst           = 400
	defaultIdempotencyLeaseMs  = 30_000
	defaultIdempotencyKeepHour = 24
)

// Config is the trading function's behaviour; DefaultConfig gives the production values.
type Config struct {
	// AdminToken authorizes account administration; empty disables the admin.
	AdminToken string
	// SyncWait is how long an order request waits for the ledger's decision before answering 202.
	SyncWait time.Duration
	// RatePerSecond and RateBurst are each token's request budget (a token bucket per replica).
	RatePerSecond float64
	RateBurst     int
	// IdempotencyLease is how long a request in flight holds its key before a retry may take it over.
	IdempotencyLease time.Duration
	// IdempotencyKeep is how long finished idempotency records are kept.
	IdempotencyKeep time.Duration
}

// DefaultConfig returns the production configuration.
func DefaultConfig() Config {
	return Config{
		SyncWait:         defaultSyncWaitMs * time.Millisecond,
		RatePerSecond:    defaultRatePerSecond,
		RateBurst:        defaultRateBurst,
		IdempotencyLease: defaultIdempotencyLeaseMs * time.Millisecond,
		IdempotencyKeep:  defaultIdempotencyKeepHour * time.Hour,
	}
}

func (c Config) check() error {
	if c.SyncWait <= 0 || c.IdempotencyLease <= 0 || c.IdempotencyKeep <= 0 {
		return errors.New("trading config: durations must be positive")
	}
	if c.RatePerSecond <= 0 || c.RateBurst < 1 {
		return errors.New("trading config: rate limit must be positive")
	}
	return nil
}

// Deps are the trading function's collaborators.
type Deps struct {
	// Pool is a pool on the database holding the trading schema (migrated with Migrate).
	Pool *pgxpool.Pool
	// Ledger is the ledger's gRPC query service.
	Ledger ledgerv1.LedgerServiceClient
	// Brokers are the Kafka brokers of kawase.commands and kawase.order.results.
	Brokers  []string
	Log      *zap.SugaredLogger
	Registry prometheus.Registerer
}

// Service is the trading function.
type Service struct {
	cfg      Config
	pool     *pgxpool.Pool
	ledger   ledgerv1.LedgerServiceClient
	commands *cekafka.Producer
	results  *resultTail
	keys     *keyCache
	limits   *limiter
	// lookups budgets the token look-ups that reach PostgreSQL (tokens not cached), all callers together.
	lookups *limiter
	log     *zap.SugaredLogger
	m       *metrics
	handler http.Handler
}

// New builds the trading function; it starts nothing until Run.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if d.Pool == nil || d.Ledger == nil || len(d.Brokers) == 0 || d.Log == nil || d.Registry == nil {
		return nil, errors.New("trading: missing dependency")
	}
	m, err := newMetrics(d.Registry)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, pool: d.Pool, ledger: d.Ledger, log: d.Log, m: m,
		commands: cekafka.NewProducer(d.Brokers),
		results:  newResultTail(d.Brokers, d.Log),
		keys:     newKeyCache(),
		limits:   newLimiter(cfg.RatePerSecond, cfg.RateBurst),
		lookups:  newLimiter(cfg.RatePerSecond*uncachedLookupsFactor, cfg.RateBurst*uncachedLookupsFactor)}
	s.handler = s.routes()
	return s, nil
}

// Handler serves the REST API and CloudEvent order requests.
func (s *Service) Handler() http.Handler { return s.handler }

// PublicPatterns are the ServeMux patterns of the public API (kawase dev mounts them on its port).
func PublicPatterns() []string {
	return []string{"/v1/accounts", "/v1/accounts/", "/v1/order-requests"}
}

// Run tails the order results and expires old idempotency records until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errc <- s.results.run(ctx) }()
	go func() { errc <- s.expireIdempotency(ctx) }()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil && !errors.Is(err, context.Canceled) {
			first = err
		}
		cancel()
	}
	return first
}

// Ready reports whether the result tail is positioned, so synchronous answers can be given; it is a
// readiness check.
func (s *Service) Ready(context.Context) error {
	if !s.results.ready.Load() {
		return errors.New("order results not tailed yet")
	}
	return nil
}

// Close releases the Kafka producer.
func (s *Service) Close() { s.commands.Close() }

// metrics are the trading function's Prometheus instruments.
type metrics struct {
	requests     *prometheus.CounterVec
	orderSeconds *prometheus.HistogramVec
	rateLimited  prometheus.Counter
	// submittedRecordErrors counts 202 answers whose order could not be noted as submitted.
	submittedRecordErrors prometheus.Counter
	// decidedReads counts decided orders read back from the ledger because their result did not
	// describe them (see placedView); placements normally need no read.
	decidedReads prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_trading_requests_total",
			Help: "REST and CloudEvent requests, by route and status code."}, []string{"route", "code"}),
		orderSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kawase_trading_order_seconds",
			Help:    "Time from an order request to its answer, by outcome (decided, pending = 202, or refused: a reused Idempotency-Key).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 13)}, []string{"outcome"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_trading_rate_limited_total",
			Help: "Requests refused with 429."}),
		submittedRecordErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_trading_submitted_record_errors_total",
			Help: "Orders answered 202 that could not be noted as submitted (GET answers 404 until the ledger applies them)."}),
		decidedReads: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_trading_decided_order_reads_total",
			Help: "Decided orders read back from the ledger's query service because their result did not describe them."}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.orderSeconds, m.rateLimited, m.submittedRecordErrors, m.decidedReads} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("trading metrics: %w", err)
		}
	}
	return m, nil
}
