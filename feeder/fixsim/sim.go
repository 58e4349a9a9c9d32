// Package fixsim is a FIX 4.4 rate provider for local mode and tests: a quickfixgo acceptor that
// checks Username(553)/Password(554) at logon, answers MarketDataRequest (35=V) for its pairs, rejects
// unknown symbols with MarketDataRequestReject (35=Y, MDReqRejReason 0), and streams top-of-book quotes
// — MarketDataSnapshotFullRefresh (35=W), or MarketDataIncrementalRefresh (35=X) when the request asks
// for incremental updates — following a random walk with each pair's precision and a sane spread.
// A control surface (Go methods and an HTTP handler) drops sessions, pauses the stream, sends bursts
// and sends malformed messages.
package fixsim

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/quickfixgo/quickfix"
	"github.com/quickfixgo/quickfix/config"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// Defaults and limits of the simulator.
const (
	// defaultIntervalMs is how often each subscribed pair is quoted.
	defaultIntervalMs = 50
	// idlePollMs is how often the stream looks again while paused or without subscribers.
	idlePollMs = 5
	// catchUpIntervalsMax bounds how far the stream catches up after a stall, in intervals.
	catchUpIntervalsMax = 2
	// slowConsumerTimeoutMs drops a connection whose peer has not drained a write for this long, the
	// way real providers cut slow consumers (a stopped feeder must not wedge the session).
	slowConsumerTimeoutMs = 1000
	// writeBufferBytesMax bounds what may wait for a slow peer before it is dropped.
	writeBufferBytesMax = 8 << 20
	// writeWaitMs bounds how long a send waits for quickfixgo to hand the message to the connection.
	writeWaitMs = 100
)

// Config configures the simulator.
type Config struct {
	// Addr is the listen address; port 0 picks a free one (see Sim.Addr).
	Addr string
	// SenderCompID is the simulator's CompID, TargetCompID the feeder's.
	SenderCompID, TargetCompID string
	// Username and Password are what a Logon must carry in tags 553 and 554.
	Username, Password string
	// Pairs are the symbols the simulator quotes; empty means all pairs kawase knows.
	Pairs []fx.Pair
	// Interval is how often each subscribed pair is quoted (default 50 ms).
	Interval time.Duration
	// TLSCertFile and TLSKeyFile, when both set, make the acceptor speak TLS.
	TLSCertFile, TLSKeyFile string
	// Seed makes the random walk reproducible; 0 seeds from the clock.
	Seed uint64
	// Logger receives the simulator's log lines; nil discards them.
	Logger *zap.Logger
}

// Sim is a running simulator.
type Sim struct {
	cfg      Config
	log      *zap.Logger
	acceptor *quickfix.Acceptor
	raw      net.Listener
	ln       *trackingListener

	// sendMu orders quote generation and sending, so quote ids leave in rising order per pair.
	sendMu sync.Mutex
	// written is signalled by every write quickfixgo makes to a connection.
	written chan struct{}

	mu        sync.Mutex
	username  string
	password  string
	interval  time.Duration
	paused    bool
	books     map[fx.Pair]*book
	session   quickfix.SessionID
	loggedOn  bool
	subs      map[fx.Pair]*subscription
	subsOrder []*subscription
	stats     Stats

	stop chan struct{}
	wg   sync.WaitGroup
}

// subscription is one pair streamed to the session.
type subscription struct {
	pair        fx.Pair
	reqID       string
	incremental bool
	// started is set once the first incremental refresh (MDUpdateAction NEW) went out.
	started bool
}

// Stats counts what the simulator did.
type Stats struct {
	LogonsAccepted int             `json:"logonsAccepted"`
	LogonsRefused  int             `json:"logonsRefused"`
	Requests       int             `json:"requests"`
	Rejects        int             `json:"rejects"`
	Quotes         map[fx.Pair]int `json:"quotes"`
	Malformed      int             `json:"malformed"`
	Dropped        int             `json:"dropped"`
}

// Start listens and starts the acceptor and the quote stream.
func Start(cfg Config) (*Sim, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	s := &Sim{
		cfg: cfg, log: cfg.Logger.Named("fixsim"), username: cfg.Username, password: cfg.Password,
		interval: cfg.Interval, books: newBooks(cfg.Pairs, cfg.Seed), subs: map[fx.Pair]*subscription{},
		stats: Stats{Quotes: map[fx.Pair]int{}}, stop: make(chan struct{}), written: make(chan struct{}, 1),
	}
	if err := s.startAcceptor(); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go s.stream()
	s.log.Info("fix simulator listening", zap.String("addr", s.Addr()), zap.Int("pairs", len(cfg.Pairs)),
		zap.Duration("interval", cfg.Interval), zap.Bool("tls", cfg.TLSCertFile != ""))
	return s, nil
}

func withDefaults(cfg Config) (Config, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.SenderCompID == "" {
		cfg.SenderCompID = fixspec.DefaultProviderCompID
	}
	if cfg.TargetCompID == "" {
		cfg.TargetCompID = fixspec.DefaultFeederCompID
	}
	if cfg.Interval <= 0 {
		cfg.Interval = defaultIntervalMs * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if len(cfg.Pairs) == 0 {
		for _, p := range fx.Pairs() {
			cfg.Pairs = append(cfg.Pairs, p.Pair)
		}
	}
	for _, p := range cfg.Pairs {
		if _, err := fx.Lookup(p); err != nil {
			return cfg, fmt.Errorf("fixsim: %w", err)
		}
	}
	if cfg.Username == "" || cfg.Password == "" {
		return cfg, errors.New("fixsim: username and password are required")
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return cfg, errors.New("fixsim: tls needs both a certificate and a key file")
	}
	return cfg, nil
}

func (s *Sim) startAcceptor() error {
	raw, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("fixsim: listen on %s: %w", s.cfg.Addr, err)
	}
	s.raw = raw
	settings, err := s.settings(raw.Addr().(*net.TCPAddr).Port)
	if err != nil {
		_ = raw.Close()
		return err
	}
	logs := fixspec.NewLogFactory(s.log, fixspec.LogHooks{})
	acc, err := quickfix.NewAcceptor(newApplication(s), quickfix.NewMemoryStoreFactory(), settings, logs)
	if err != nil {
		_ = raw.Close()
		return fmt.Errorf("fixsim: acceptor: %w", err)
	}
	acc.SetNewListenerCallback(s.listenerFor)
	if err := acc.Start(); err != nil {
		_ = raw.Close()
		return fmt.Errorf("fixsim: start acceptor: %w", err)
	}
	s.acceptor = acc
	return nil
}

// settings configures the one session; SocketAcceptPort must be the real port, since quickfixgo
// checks it against each connection's local port.
func (s *Sim) settings(port int) (*quickfix.Settings, error) {
	dict, err := fixspec.DictionaryPath()
	if err != nil {
		return nil, fmt.Errorf("fixsim: %w", err)
	}
	st := quickfix.NewSettings()
	ss := quickfix.NewSessionSettings()
	for k, v := range map[string]string{
		config.BeginString: fixspec.BeginString, config.SenderCompID: s.cfg.SenderCompID,
		config.TargetCompID: s.cfg.TargetCompID, config.SocketAcceptPort: strconv.Itoa(port),
		config.ResetOnLogon: "Y", config.ResetOnLogout: "Y", config.ResetOnDisconnect: "Y",
		config.PersistMessages: "N", config.DataDictionary: dict, config.TimeStampPrecision: "MICROS",
	} {
		ss.Set(k, v)
	}
	if s.cfg.TLSCertFile != "" { // quickfixgo's acceptor reads TLS from the global settings
		g := st.GlobalSettings()
		g.Set(config.SocketUseSSL, "Y") // server TLS; client certificates are not asked for
		g.Set(config.SocketCertificateFile, s.cfg.TLSCertFile)
		g.Set(config.SocketPrivateKeyFile, s.cfg.TLSKeyFile)
	}
	if _, err := st.AddSession(ss); err != nil {
		return nil, fmt.Errorf("fixsim: session settings: %w", err)
	}
	return st, nil
}

// listenerFor is quickfixgo's NewListenerCallback: the socket is open already (so port 0 works and
// Addr is known); connections are tracked above TLS.
func (s *Sim) listenerFor(_ string, tlsConfig *tls.Config) (net.Listener, error) {
	base := s.raw
	if tlsConfig != nil {
		base = tls.NewListener(s.raw, tlsConfig)
	}
	s.ln = newTrackingListener(base, s.log, s.written)
	return s.ln, nil
}

// Addr is the address the simulator listens on.
func (s *Sim) Addr() string { return s.raw.Addr().String() }

// Close stops the stream, cuts every connection and stops the acceptor.
func (s *Sim) Close() {
	close(s.stop)
	s.wg.Wait()
	s.DropSessions()
	s.acceptor.Stop()
}

// Stats returns a copy of the counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Quotes = make(map[fx.Pair]int, len(s.stats.Quotes))
	for p, n := range s.stats.Quotes {
		st.Quotes[p] = n
	}
	return st
}

// Subscribed lists the pairs currently streamed, in subscription order.
func (s *Sim) Subscribed() []fx.Pair {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]fx.Pair, 0, len(s.subsOrder))
	for _, sub := range s.subsOrder {
		out = append(out, sub.pair)
	}
	return out
}

// LoggedOn reports whether a feeder session is logged on.
func (s *Sim) LoggedOn() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loggedOn
}

// checkCredentials compares in constant time.
func (s *Sim) checkCredentials(user, pass string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := subtle.ConstantTimeCompare([]byte(user), []byte(s.username))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(s.password))
	return u&p == 1
}

func (s *Sim) knows(p fx.Pair) bool {
	_, ok := s.books[p]
	return ok
}

func (s *Sim) onLogon(id quickfix.SessionID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.session, s.loggedOn = id, true
	s.stats.LogonsAccepted++
}

func (s *Sim) onLogout() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loggedOn = false
	s.subs = map[fx.Pair]*subscription{}
	s.subsOrder = nil
}

func (s *Sim) subscribe(sub *subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.subs[sub.pair]; ok {
		s.subsOrder = slices.DeleteFunc(s.subsOrder, func(x *subscription) bool { return x == old })
	}
	s.subs[sub.pair] = sub
	s.subsOrder = append(s.subsOrder, sub)
}

func (s *Sim) unsubscribe(p fx.Pair) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.subs, p)
	s.subsOrder = slices.DeleteFunc(s.subsOrder, func(x *subscription) bool { return x.pair == p })
}
