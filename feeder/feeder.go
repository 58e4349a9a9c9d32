// Package feeder is kawase's FIX rate feeder: a quickfixgo initiator that subscribes to market data
// for the configured pairs, turns every quote (35=W or 35=X) into a kawase.rate.v1 CloudEvent and
// produces it to the rates topic keyed by pair, within milliseconds of receipt.
//
// Replicas elect one leader (Elector: a PostgreSQL advisory lock or a Kubernetes Lease); only the
// leader holds the FIX session and publishes. Every term has a fencing epoch greater than all earlier
// ones, carried on every rate, and every write to Kafka is gated on the term's lease still being held,
// so a replica that loses leadership — or is frozen past its lease and wakes — publishes nothing more.
// Standbys stay warm (configuration loaded, broker checked), so failover costs an election and a logon.
package feeder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/quickfixgo/quickfix"
	"github.com/quickfixgo/quickfix/config"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/cekafka"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// Session and failover limits.
const (
	// fixHeartBtIntSeconds is short so that a provider notices a dead or frozen feeder within
	// seconds and lets the new leader log on.
	fixHeartBtIntSeconds    = 1
	fixLogonTimeoutSeconds  = 5
	fixLogoutTimeoutSeconds = 1
	// fixReconnectIntervalSeconds keeps quickfixgo from reconnecting on its own: the feeder does, with
	// capped backoff.
	fixReconnectIntervalSeconds = 3600
	fixInChanMessages           = 4096
	// initiatorStopTimeoutMs bounds quickfixgo's Initiator.Stop, which hangs while a TLS handshake
	// without deadline waits on a peer that never answers.
	initiatorStopTimeoutMs  = 3000
	logonWaitMs             = (fixLogonTimeoutSeconds + 1) * 1000
	reconnectDelayMinMs     = 100
	reconnectDelayMaxMs     = 5000
	rerequestDelayDefaultMs = 10_000
	brokerCheckIntervalMs   = 5000
	brokerCheckTimeoutMs    = 3000
	brokerWaitDelayMaxMs    = 5000
	// resignHoldOffMs is how long a replica whose term failed (not lost) waits before campaigning
	// again, so another replica gets the chance to lead.
	resignHoldOffMs = 1000
	pairsCountMax   = 50
)

// FIXConfig describes the FIX session to the rate provider.
type FIXConfig struct {
	// Addr is the provider's host:port.
	Addr string
	// SenderCompID is ours (default KAWASE), TargetCompID the provider's (default FIXSIM).
	SenderCompID, TargetCompID string
	// Username and Password go into the Logon as tags 553 and 554.
	Username, Password string
	// TLS dials the provider with TLS; TLSCAFile verifies it, TLSInsecureSkipVerify skips that (tests).
	TLS                   bool
	TLSCAFile             string
	TLSInsecureSkipVerify bool
	// Incremental asks for MarketDataIncrementalRefresh (35=X) instead of full refreshes (35=W).
	Incremental bool
	// RerequestDelay is how long after a MarketDataRequestReject the pair is requested again
	// (default 10 s).
	RerequestDelay time.Duration
}

// Config configures one feeder replica.
type Config struct {
	FIX FIXConfig
	// Pairs to subscribe to, at most 50.
	Pairs []fx.Pair
	// Brokers are the Kafka bootstrap addresses; Topic defaults to kawase.rates.
	Brokers []string
	Topic   string
	// Elector chooses the leader.
	Elector Elector
	// Logger and Metrics default to a no-op logger and unregistered metrics.
	Logger  *zap.Logger
	Metrics *Metrics
	// OnPublished, when set, sees every acknowledged rate (tests and benchmarks); it may be called
	// from several goroutines at once and must be quick.
	OnPublished func(Published)
}

// refusedQuoteLogIntervalMs is the least time between two warnings about refused quotes; the
// metric counts every one.
const refusedQuoteLogIntervalMs = 1_000

// Feeder is one replica.
type Feeder struct {
	cfg      Config
	dict     *fixspec.Dictionary
	log      *zap.Logger
	metrics  *Metrics
	attempts atomic.Int64
	warm     *kafka.Client
	ready    atomic.Bool
	epoch    atomic.Int64
	leading  atomic.Bool
	// refusedLog and outOfRangeLog pace the warnings about refused quotes, malformed and out of range
	// apart (a provider fault refuses every quote, and one kind must not hide the other).
	refusedLog, outOfRangeLog *observe.LogEvery
}

// New checks the configuration and prepares everything a standby needs: the FIX settings and data
// dictionary are loaded here, once.
func New(cfg Config) (*Feeder, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := sessionSettings(cfg.FIX, ""); err != nil {
		return nil, err
	}
	dict, err := fixspec.NewDictionary()
	if err != nil {
		return nil, fmt.Errorf("feeder: %w", err)
	}
	return &Feeder{
		cfg: cfg, log: cfg.Logger, metrics: cfg.Metrics, dict: dict,
		refusedLog:    observe.NewLogEvery(refusedQuoteLogIntervalMs * time.Millisecond),
		outOfRangeLog: observe.NewLogEvery(refusedQuoteLogIntervalMs * time.Millisecond),
		warm:          &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: brokerCheckTimeoutMs * time.Millisecond},
	}, nil
}

func withDefaults(cfg Config) (Config, error) {
	var errs []error
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Topic == "" {
		cfg.Topic = eventing.TopicRates
	}
	if cfg.FIX.SenderCompID == "" {
		cfg.FIX.SenderCompID = fixspec.DefaultFeederCompID
	}
	if cfg.FIX.TargetCompID == "" {
		cfg.FIX.TargetCompID = fixspec.DefaultProviderCompID
	}
	if cfg.FIX.RerequestDelay <= 0 {
		cfg.FIX.RerequestDelay = rerequestDelayDefaultMs * time.Millisecond
	}
	if len(cfg.Pairs) == 0 || len(cfg.Pairs) > pairsCountMax {
		errs = append(errs, fmt.Errorf("feeder: 1 to %d pairs, not %d", pairsCountMax, len(cfg.Pairs)))
	}
	for _, p := range cfg.Pairs {
		if _, err := fx.Lookup(p); err != nil {
			errs = append(errs, fmt.Errorf("feeder: %w", err))
		}
	}
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("feeder: no kafka brokers"))
	}
	if cfg.Elector == nil {
		errs = append(errs, errors.New("feeder: no leader elector"))
	}
	if cfg.FIX.Username == "" || cfg.FIX.Password == "" {
		errs = append(errs, errors.New("feeder: fix username and password are required"))
	}
	return cfg, errors.Join(errs...)
}

// sessionSettings builds the quickfixgo initiator settings. Each attempt has its own
// SessionQualifier (local only, never on the wire), so an initiator quickfixgo cannot stop never
// blocks the next one's registration.
//
// The settings name no DataDictionary: quickfixgo v0.9.11, given one, rebuilds a map of a repeating
// group's definition for every field of the group it parses, which cost a third of the feeder's CPU.
// Without one it parses messages flat and runs only its dictionary-free checks; the application then
// checks every message, session and application alike, against the FIX 4.4 dictionary compiled
// once (fixspec.Dictionary: the checks of quickfixgo's validator) and reads the repeating groups of
// 35=W and 35=X by the dictionary's group definitions.
func sessionSettings(c FIXConfig, qualifier string) (*quickfix.Settings, error) {
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return nil, fmt.Errorf("feeder: fix address %q: %w", c.Addr, err)
	}
	ss := quickfix.NewSessionSettings()
	if qualifier != "" {
		ss.Set(config.SessionQualifier, qualifier)
	}
	for k, v := range map[string]string{
		config.BeginString: fixspec.BeginString, config.SenderCompID: c.SenderCompID, config.TargetCompID: c.TargetCompID,
		config.SocketConnectHost: host, config.SocketConnectPort: port,
		config.HeartBtInt: strconv.Itoa(fixHeartBtIntSeconds), config.LogonTimeout: strconv.Itoa(fixLogonTimeoutSeconds),
		config.LogoutTimeout: strconv.Itoa(fixLogoutTimeoutSeconds), config.ReconnectInterval: strconv.Itoa(fixReconnectIntervalSeconds),
		config.ResetOnLogon: "Y", config.ResetOnLogout: "Y", config.ResetOnDisconnect: "Y", config.PersistMessages: "N",
		config.InChanCapacity: strconv.Itoa(fixInChanMessages),
	} {
		ss.Set(k, v)
	}
	if c.TLS {
		ss.Set(config.SocketUseSSL, "Y")
		ss.Set(config.SocketServerName, host)
		if c.TLSCAFile != "" {
			ss.Set(config.SocketCAFile, c.TLSCAFile)
		}
		if c.TLSInsecureSkipVerify {
			ss.Set(config.SocketInsecureSkipVerify, "Y")
		}
	}
	st := quickfix.NewSettings()
	if _, err := st.AddSession(ss); err != nil {
		return nil, fmt.Errorf("feeder: fix session settings: %w", err)
	}
	return st, nil
}

// Ready reports whether the replica is warm: the broker answered its last check.
func (f *Feeder) Ready() bool { return f.ready.Load() }

// Leading reports the epoch of the current term, and whether this replica leads.
func (f *Feeder) Leading() (int64, bool) { return f.epoch.Load(), f.leading.Load() }

// Run stands by warm, campaigns, and leads whenever it wins, until ctx ends.
func (f *Feeder) Run(ctx context.Context) error {
	if f.waitBroker(ctx) != nil {
		return nil // ctx ended
	}
	go f.watchBroker(ctx)
	f.log.Info("feeder standing by", zap.Strings("brokers", f.cfg.Brokers), zap.String("fix", f.cfg.FIX.Addr),
		zap.Int("pairs", len(f.cfg.Pairs)))
	for {
		if f.waitBroker(ctx) != nil {
			return nil // ctx ended; a replica that cannot reach Kafka does not campaign
		}
		lease, err := f.cfg.Elector.Campaign(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("feeder: campaign: %w", err)
		}
		err = f.lead(ctx, lease)
		lease.Resign()
		f.stepDown(lease, err, ctx.Err() != nil)
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, ErrLeaseLost) && !sleepCtx(ctx, resignHoldOffMs*time.Millisecond) {
			return nil
		}
	}
}

// lead runs one term: a publisher fenced by the lease and FIX sessions until the term ends.
func (f *Feeder) lead(ctx context.Context, lease *Lease) error {
	f.epoch.Store(lease.Epoch())
	f.leading.Store(true)
	f.metrics.IsLeader.Set(1)
	f.metrics.Epoch.Set(float64(lease.Epoch()))
	f.log.Info("leadership acquired", zap.Int64("epoch", lease.Epoch()))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lease.Done():
			cancel(lease.Err())
		case <-ctx.Done():
		}
	}()
	pub, err := newPublisher(ctx, &f.cfg, lease, f.metrics)
	if err != nil {
		return fmt.Errorf("start publisher: %w", err)
	}
	defer pub.close()
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		if err := pub.run(ctx); err != nil && ctx.Err() == nil {
			cancel(err)
		}
	}()
	defer func() { <-pubDone }()
	f.runSessions(ctx, f.newTerm(ctx, lease, pub))
	return context.Cause(ctx)
}

func (f *Feeder) newTerm(ctx context.Context, lease *Lease, pub *publisher) *term {
	t := &term{ctx: ctx, lease: lease, pub: pub, pairs: make(map[fx.Pair]*pairState, len(f.cfg.Pairs)),
		symbols: make(map[string]fx.Pair, len(f.cfg.Pairs))}
	for _, p := range f.cfg.Pairs {
		t.pairs[p] = &pairState{received: f.metrics.Received.WithLabelValues(string(p))}
		t.symbols[fixspec.Symbol(p)] = p
	}
	return t
}

// stepDown records the end of a term; the lease's gate already stopped publishing.
func (f *Feeder) stepDown(lease *Lease, err error, shutdown bool) {
	f.leading.Store(false)
	f.metrics.IsLeader.Set(0)
	f.metrics.setSessionState(SessionDisconnected)
	if shutdown {
		f.log.Info("leadership released on shutdown", zap.Int64("epoch", lease.Epoch()))
		return
	}
	f.log.Warn("leadership ended; standing by", zap.Int64("epoch", lease.Epoch()), zap.Error(err))
}

// runSessions keeps a FIX session up for the term, reconnecting with capped backoff.
func (f *Feeder) runSessions(ctx context.Context, t *term) {
	delay := newBackoff(reconnectDelayMinMs, reconnectDelayMaxMs)
	for ctx.Err() == nil {
		if f.runSession(ctx, t) {
			delay.reset()
		}
		d := delay.next()
		if ctx.Err() == nil {
			f.log.Info("fix reconnecting", zap.Duration("in", d))
		}
		sleepCtx(ctx, d)
	}
}

// runSession runs one initiator until its session ends or the term does; it reports whether the
// session had logged on.
func (f *Feeder) runSession(ctx context.Context, t *term) bool {
	app := newSessionApp(f, t)
	settings, err := sessionSettings(f.cfg.FIX, strconv.FormatInt(f.attempts.Add(1), 10))
	if err != nil {
		f.log.Error("fix settings", zap.Error(err))
		return false
	}
	init, err := quickfix.NewInitiator(app, quickfix.NewMemoryStoreFactory(), settings,
		fixspec.NewLogFactory(f.log, app.hooks()))
	if err != nil {
		f.log.Error("fix initiator", zap.Error(err))
		return false
	}
	f.metrics.setSessionState(SessionConnecting)
	if err := init.Start(); err != nil {
		f.log.Error("fix initiator start", zap.Error(err))
		return false
	}
	defer func() {
		app.stopping.Store(true)
		app.end()
		f.stopInitiator(init)
		f.metrics.setSessionState(SessionDisconnected)
	}()
	timeout := time.NewTimer(logonWaitMs * time.Millisecond)
	defer timeout.Stop()
	select {
	case <-app.loggedOn:
	case <-app.ended:
		return false
	case <-timeout.C:
		f.metrics.LogonFailures.WithLabelValues("timeout").Inc()
		f.log.Warn("fix logon timed out", zap.String("addr", f.cfg.FIX.Addr))
		return false
	case <-ctx.Done():
		return false
	}
	select {
	case <-app.ended:
	case <-ctx.Done():
	}
	return true
}

// stopInitiator stops an initiator, abandoning it if quickfixgo hangs (a TLS handshake with a peer
// that never answers has no deadline); its application ignores everything from then on.
func (f *Feeder) stopInitiator(init *quickfix.Initiator) {
	done := make(chan struct{})
	go func() {
		init.Stop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(initiatorStopTimeoutMs * time.Millisecond):
		f.log.Warn("fix initiator did not stop; abandoning it", zap.Int("timeout_ms", initiatorStopTimeoutMs))
	}
}

// waitBroker blocks until the broker answers, so a standby is warm before it campaigns.
func (f *Feeder) waitBroker(ctx context.Context) error {
	delay := newBackoff(reconnectDelayMinMs, brokerWaitDelayMaxMs)
	for {
		err := f.checkBroker(ctx)
		if err == nil {
			return nil
		}
		f.log.Warn("kafka broker not ready", zap.Strings("brokers", f.cfg.Brokers), zap.Error(err))
		if !sleepCtx(ctx, delay.next()) {
			return ctx.Err()
		}
	}
}

func (f *Feeder) watchBroker(ctx context.Context) {
	tick := time.NewTicker(brokerCheckIntervalMs * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := f.checkBroker(ctx); err != nil && ctx.Err() == nil {
				f.log.Warn("kafka broker check failed", zap.Error(err))
			}
		}
	}
}

// checkBroker asks for the rates topic's metadata over an unfenced connection.
func (f *Feeder) checkBroker(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, brokerCheckTimeoutMs*time.Millisecond)
	defer cancel()
	_, err := cekafka.Leaders(ctx, f.warm, f.cfg.Topic)
	up := err == nil
	f.ready.Store(up)
	if up {
		f.metrics.BrokerUp.Set(1)
	} else {
		f.metrics.BrokerUp.Set(0)
	}
	return err
}
