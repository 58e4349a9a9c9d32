// Package ratekeeper is the KafkaSource sink of the rates topic. It processes every provider quote
// exactly once — per pair, a rate is processed only if it is strictly newer than the last one processed
// (provider time, then quote id) and its feeder epoch is not stale — and records the per-pair
// high-water mark, the tick, the candles it moves and anything it triggers in one PostgreSQL
// transaction. Redelivery, a replayed topic and two overlapping feeder leaders therefore leave exactly
// one effect per quote. It also serves the candles it derives over gRPC (CandleService), so no other
// service reads its tables.
package ratekeeper

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// Schema is the PostgreSQL schema the ratekeeper owns; no other service reads it.
const Schema = "ratekeeper"

//go:embed migrations/*.sql
var migrations embed.FS

// Defaults and limits of the keeper.
const (
	defaultBatchSizeMax  = 256
	defaultWritersCount  = 2
	defaultTickRetention = 48 * time.Hour
	queueLenMax          = 4096
	txTimeoutMs          = 10_000
	// batchGatherMs bounds how long a gathered batch waits for more deliveries after its first.
	batchGatherMs = 8
	// batchGatherIdleMs ends gathering early when no delivery arrived for that long.
	batchGatherIdleMs = 3
)

// Trigger is the seam where accepted rates take effect beyond the tick history (limit and stop orders
// trigger on them; issue 6). OnRate runs inside the transaction that accepts the rate — after the
// pair's mark is locked, before the tick is written — once per accepted rate and never for a
// duplicate or stale one, so whatever it writes with q commits atomically with the high-water mark.
// It must not commit or roll back. An error aborts the whole batch, which is then retried: return
// only transient errors, and record permanent problems yourself.
type Trigger interface {
	OnRate(ctx context.Context, q Querier, rate *eventing.RateV1) error
}

// Querier runs statements inside the keeper's transaction; pgx.Tx and *pgxpool.Conn satisfy it, so a
// Trigger can be tested inside a transaction of its own.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// NoTrigger is the Trigger of a keeper that only keeps history.
type NoTrigger struct{}

// OnRate does nothing.
func (NoTrigger) OnRate(context.Context, Querier, *eventing.RateV1) error { return nil }

// Config tunes the keeper; the zero value is usable.
type Config struct {
	// BatchSizeMax caps how many in-flight deliveries one transaction processes (default 256).
	BatchSizeMax int
	// Writers is the number of transactions that may run at once (default 2).
	Writers int
	// TickRetention is how long ticks and S5 candles are kept, by provider time (default 48h); negative
	// keeps them forever. Of the M1, M5 and H1 candles, each pair keeps the newest 5000 of each (all
	// that GetCandles serves).
	TickRetention time.Duration
	// GatherMax is how long a batch may wait for more deliveries after its first (default
	// batchGatherMs); negative disables gathering: a batch holds only what was already waiting.
	GatherMax time.Duration
	// GatherIdle ends gathering when no delivery arrived for that long (default batchGatherIdleMs).
	GatherIdle time.Duration
	// Now returns the current time; nil means time.Now (tests pin it).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.BatchSizeMax <= 0 {
		c.BatchSizeMax = defaultBatchSizeMax
	}
	if c.Writers <= 0 {
		c.Writers = defaultWritersCount
	}
	if c.TickRetention == 0 {
		c.TickRetention = defaultTickRetention
	}
	if c.GatherMax == 0 {
		c.GatherMax = batchGatherMs * time.Millisecond
	}
	if c.GatherMax < 0 {
		c.GatherMax = 0
	}
	if c.GatherIdle <= 0 {
		c.GatherIdle = batchGatherIdleMs * time.Millisecond
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Keeper is the ratekeeper function: an HTTP CloudEvents sink (Handler), a gRPC candle read path
// (RegisterGRPC) and the background writers that commit batches (Run).
type Keeper struct {
	pool    *pgxpool.Pool
	trigger Trigger
	cfg     Config
	log     *zap.SugaredLogger
	metrics *metrics
	queue   chan *submission
	stopped chan struct{}
	// gathering lets one writer at a time gather a batch.
	gathering sync.Mutex
	// marked holds the pairs (fx.Pair) whose mark row a committed batch has seen, so that batches of
	// only those skip the statement that creates missing marks.
	marked sync.Map
}

// New returns a keeper on pool (already migrated with Migrate). trigger may be nil (NoTrigger).
func New(pool *pgxpool.Pool, trigger Trigger, cfg Config, log *zap.SugaredLogger, reg prometheus.Registerer) (*Keeper, error) {
	if pool == nil || log == nil || reg == nil {
		return nil, errors.New("ratekeeper: pool, logger and registry are required")
	}
	if trigger == nil {
		trigger = NoTrigger{}
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("ratekeeper: %w", err)
	}
	return &Keeper{pool: pool, trigger: trigger, cfg: cfg.withDefaults(), log: log, metrics: m,
		queue: make(chan *submission, queueLenMax), stopped: make(chan struct{})}, nil
}

// Migrate brings the ratekeeper schema at url up to date.
func Migrate(ctx context.Context, url string) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("ratekeeper migrations: %w", err)
	}
	return pgdb.Migrate(ctx, url, Schema, sub)
}

// RegisterGRPC registers the CandleService on s.
func (k *Keeper) RegisterGRPC(s *grpc.Server) {
	ratesv1.RegisterCandleServiceServer(s, &candleServer{k: k})
}

// Run commits submitted rates in batches, and prunes old ticks, until ctx ends. Deliveries that
// arrive while it is not running wait (and time out as retryable).
func (k *Keeper) Run(ctx context.Context) error {
	defer close(k.stopped)
	fns := make([]func(context.Context) error, 0, k.cfg.Writers+1)
	for range k.cfg.Writers {
		fns = append(fns, k.write)
	}
	if k.cfg.TickRetention > 0 {
		fns = append(fns, k.prune)
	}
	errc := make(chan error, len(fns))
	for _, fn := range fns {
		go func() { errc <- fn(ctx) }()
	}
	var first error
	for range fns {
		if err := <-errc; err != nil && first == nil && !errors.Is(err, context.Canceled) {
			first = err
		}
	}
	return first
}
