// Package ledger is the ledger function of kawase: the system of record for accounts, orders,
// executions, positions and money. It applies every kawase.order.command.v1 that the commands topic's
// ordered KafkaSource delivers (POST / with the CloudEvent) in a PostgreSQL transaction: lock the
// account, check, apply, record the command id with its result (inbox) and the resulting events
// (outbox). Commands delivered at the same time (from different partitions, so of different accounts)
// share one transaction, each with its own inbox entry and events. A redelivered command returns its
// first result and changes nothing. After commit the events are published to Kafka
// (kawase.trade.executed.v1 to the executions channel, kawase.order.result.v1 to
// kawase.order.results) before the command is answered; a sweep republishes anything a crash left.
//
// Money is double-entry: every change is a journal entry of postings that balance per currency over
// all accounts, house accounts included, so no currency is ever created or destroyed; the code panics
// on an unbalanced entry and the database refuses one at commit.
//
// The ledger also serves the gRPC LedgerService (proto/ledger/v1) that the trading function reads
// through, and runs a watcher (one active replica at a time, by advisory lock) that turns a crossed
// limit/stop order into the command "trigger:<orderId>", an expired GTD order into "expire:<orderId>"
// (a cancel) and an account below 50% margin into "closeout:<accountId>:<txSeq>:<second>", each keyed
// by account on kawase.commands. They are applied like every other command, in order with the
// account's own; their ids are deterministic and a trigger only fills a pending order, so a trigger
// seen twice (resent, or also sent by the ratekeeper) fills once. Anyone may send trigger commands;
// ListPendingOrders exposes the book to a trigger engine outside the ledger.
package ledger

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/pgdb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema the ledger owns.
const Schema = "ledger"

// Migrate brings the ledger's schema up to date.
func Migrate(ctx context.Context, databaseURL string) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("ledger migrations: %w", err)
	}
	return pgdb.Migrate(ctx, databaseURL, Schema, sub)
}

// Defaults of Config.
const (
	defaultLeverage      = 25
	defaultQuoteAgeMaxMs = 5_000
	// defaultMarketOrderAgeMaxMs: a market order (FOK or IOC: now or never) older than this when the
	// ledger gets to it is rejected, not filled at whatever the price has become. Well above a busy
	// ledger's queueing (under a second) and a restart's; far below the minutes a delivery is retried
	// for, or the hours a command may wait among the dead letters before it is replayed.
	defaultMarketOrderAgeMaxMs = 30_000
	defaultSweepIntervalMs     = 1_000
	defaultWatchIntervalMs     = 100
	defaultBookRefreshMs       = 500
	defaultBookReloadMs        = 60_000
	defaultTriggerResendMs     = 5_000
	commandApplyTimeoutMs      = 10_000
	livePublishTimeoutMs       = 5_000
	commandRetryCountMax       = 3
	serializationRetryDelay    = 5 * time.Millisecond
	rollbackTimeoutMs          = 2_000
)

// Config is the ledger's behaviour; DefaultConfig gives the production values.
type Config struct {
	// DefaultLeverage is the leverage of every pair not in Leverage (margin = notional / leverage).
	DefaultLeverage decimal.Decimal
	// Leverage overrides the leverage per pair.
	Leverage map[fx.Pair]decimal.Decimal
	// QuoteAgeMax is how old (by provider time) a quote may be for a market order to fill on it.
	QuoteAgeMax time.Duration
	// MarketOrderAgeMax is how long after trading accepted it (its command's requestedAt) a market
	// order may still fill; an older one is rejected as expired.
	MarketOrderAgeMax time.Duration
	// SweepInterval is how often the outbox is swept for rows left behind (older than outboxStaleMs).
	SweepInterval time.Duration
	// Watch runs the trigger/expiry/close-out watcher in Run (one active replica at a time).
	Watch bool
	// WatchInterval is how often the watcher evaluates the book at the latest quotes.
	WatchInterval time.Duration
	// BookRefresh is how often the watcher reads what changed in the book (the pending orders and
	// positions of the accounts changed since its previous read).
	BookRefresh time.Duration
	// BookReload is how often the watcher reads the whole book instead: a bound on how long a change
	// made outside the ledger's own writes (say, by hand in SQL) could go unseen.
	BookReload time.Duration
	// TriggerResend is how long the watcher waits before sending a command again for an order or
	// account whose state has not changed (the first one was lost or is still queued).
	TriggerResend time.Duration
}

// DefaultConfig returns the production configuration: leverage 25 on every pair, quotes up to 5 s old.
func DefaultConfig() Config {
	return Config{
		DefaultLeverage:   decimal.NewFromInt(defaultLeverage),
		QuoteAgeMax:       defaultQuoteAgeMaxMs * time.Millisecond,
		MarketOrderAgeMax: defaultMarketOrderAgeMaxMs * time.Millisecond,
		SweepInterval:     defaultSweepIntervalMs * time.Millisecond,
		Watch:             true,
		WatchInterval:     defaultWatchIntervalMs * time.Millisecond,
		BookRefresh:       defaultBookRefreshMs * time.Millisecond,
		BookReload:        defaultBookReloadMs * time.Millisecond,
		TriggerResend:     defaultTriggerResendMs * time.Millisecond,
	}
}

func (c Config) check() error {
	if !c.DefaultLeverage.IsPositive() {
		return errors.New("ledger config: default leverage must be positive")
	}
	for p, l := range c.Leverage {
		if _, err := fx.Lookup(p); err != nil {
			return fmt.Errorf("ledger config: leverage: %w", err)
		}
		if !l.IsPositive() {
			return fmt.Errorf("ledger config: leverage of %s must be positive", p)
		}
	}
	if c.QuoteAgeMax <= 0 || c.MarketOrderAgeMax <= 0 || c.SweepInterval <= 0 || c.WatchInterval <= 0 || c.BookRefresh <= 0 || c.BookReload <= 0 || c.TriggerResend <= 0 {
		return errors.New("ledger config: durations must be positive")
	}
	return nil
}

// Deps are the ledger's collaborators.
type Deps struct {
	// Pool is a pool on the database holding the ledger schema (migrated with Migrate).
	Pool *pgxpool.Pool
	// Prices are the current quotes (a QuoteBook fed by FollowRates in production).
	Prices PriceSource
	// Brokers are the Kafka brokers the outbox and the watcher publish to.
	Brokers []string
	Log     *zap.SugaredLogger
	// Registry receives the ledger's metrics (kawase_ledger_*).
	Registry prometheus.Registerer
}

// Ledger applies commands, publishes their events and answers queries.
type Ledger struct {
	cfg    Config
	pool   *pgxpool.Pool
	prices PriceSource
	log    *zap.SugaredLogger
	pub    *publisher
	m      *metrics
	watch  *watcher
	group  grouper
}

// New builds a ledger; it starts nothing until Run.
func New(cfg Config, d Deps) (*Ledger, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if d.Pool == nil || d.Prices == nil || len(d.Brokers) == 0 || d.Log == nil || d.Registry == nil {
		return nil, errors.New("ledger: missing dependency")
	}
	m, err := newMetrics(d.Registry)
	if err != nil {
		return nil, err
	}
	l := &Ledger{cfg: cfg, pool: d.Pool, prices: d.Prices, log: d.Log, m: m}
	l.pub = newPublisher(d.Pool, d.Brokers, cfg.SweepInterval, d.Log, m)
	l.watch = newWatcher(l, d.Brokers)
	return l, nil
}

// Run publishes the outbox (sweeping it at once, for rows a previous process left), prunes the book's
// change log and, when configured, runs the watcher, until ctx ends.
func (l *Ledger) Run(ctx context.Context) error {
	fns := []func(context.Context) error{l.pub.run, l.pruneBookChanges}
	if l.cfg.Watch {
		fns = append(fns, l.watch.run)
	}
	errc := make(chan error, len(fns))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, fn := range fns {
		go func() { errc <- fn(ctx) }()
	}
	var first error
	for range fns {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
		cancel()
	}
	return first
}

// Close releases the Kafka writers.
func (l *Ledger) Close() {
	l.pub.close()
	l.watch.close()
}

func (l *Ledger) leverage(p fx.Pair) decimal.Decimal {
	if v, ok := l.cfg.Leverage[p]; ok {
		return v
	}
	return l.cfg.DefaultLeverage
}

// Apply applies one command and returns its result once the command's events are published. A
// command applied before (same CommandID) returns the first result and changes nothing. Commands
// that arrive together are applied together, in one transaction (see group.go). Errors are transient
// (the database, Kafka); the caller retries with the same command.
func (l *Ledger) Apply(ctx context.Context, cmd *eventing.OrderCommandV1) (eventing.OrderResultV1, error) {
	if err := cmd.Validate(); err != nil {
		return eventing.OrderResultV1{}, err
	}
	req := &request{ctx: ctx, cmd: cmd, started: time.Now(), done: make(chan reply, 1)}
	if l.group.enqueue(req) {
		go l.runRounds()
	}
	select {
	case rep := <-req.done:
		return rep.res, rep.err
	case <-ctx.Done():
		// The command may still be applied: its redelivery finds it in the inbox.
		return eventing.OrderResultV1{}, fmt.Errorf("apply command %s: %w", cmd.CommandID, ctx.Err())
	}
}

// metrics are the ledger's Prometheus instruments.
type metrics struct {
	commands      *prometheus.CounterVec
	commandErrors prometheus.Counter
	applySeconds  prometheus.Histogram
	published     prometheus.Counter
	publishErrors prometheus.Counter
	triggers      *prometheus.CounterVec
	valuations    prometheus.Counter
	bookReads     *prometheus.CounterVec
	watcherErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_ledger_commands_total",
			Help: "Commands applied, by kind and outcome (replay = redelivery answered from the inbox)."},
			[]string{"kind", "outcome"}),
		commandErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ledger_command_errors_total",
			Help: "Commands that failed transiently and will be redelivered."}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_ledger_apply_seconds",
			Help: "Time from a command's arrival to its answer: its round's transaction and the publishing of its events.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ledger_outbox_published_total",
			Help: "Outbox events published to Kafka."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ledger_outbox_publish_errors_total",
			Help: "Outbox publishing rounds that failed and were retried."}),
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_ledger_watcher_commands_total",
			Help: "Commands the watcher sent, by kind (trigger, expire, closeout)."}, []string{"kind"}),
		valuations: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_ledger_watcher_valuations_total",
			Help: "Accounts the watcher valued exactly to screen for close-outs (all at each screen rebuild, then only those near the line)."}),
		bookReads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_ledger_watcher_book_reads_total",
			Help: "Reads of the book by the watcher, by kind: full (every pending order and position) or changes (only the accounts changed since the previous read)."},
			[]string{"kind"}),
		watcherErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_ledger_watcher_errors_total",
			Help: "Watcher rounds and change-log prunes that failed and were tried again, by stage (round, prune)."},
			[]string{"stage"}),
	}
	for _, c := range []prometheus.Collector{m.commands, m.commandErrors, m.applySeconds, m.published, m.publishErrors, m.triggers, m.valuations,
		m.bookReads, m.watcherErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ledger metrics: %w", err)
		}
	}
	return m, nil
}
