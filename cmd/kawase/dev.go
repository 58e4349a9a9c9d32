package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	manifests "github.com/kawase-fx/kawase/config"
	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/manifest"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/pgdb"
)

// Files under the data directory.
const (
	devStateFile   = "dev.json"
	devSecretsFile = "secrets.json"
	devPGSubdir    = "pg"
	devKafkaSubdir = "kafka"
	devTokenBytes  = 24
	kafkaPingMs    = 1_000
)

// devState is .run/dev.json: where a running `kawase dev` can be reached, for people, the CLI and tests.
type devState struct {
	HTTP       string `json:"http"`
	GRPC       string `json:"grpc"`
	Kafka      string `json:"kafka"`
	Database   string `json:"database"`
	AdminToken string `json:"adminToken"`
	PID        int    `json:"pid"`
	// Extsim is the external-system simulator's base URL (GET /stats, POST /control/open|close).
	Extsim string `json:"extsim,omitempty"`
	// FIX is the FIX simulator's address and FixsimControl its control surface.
	FIX           string `json:"fix,omitempty"`
	FixsimControl string `json:"fixsimControl,omitempty"`
	// DemoAccount is the account kawase dev opened for trying it out, with its token.
	DemoAccount *devAccount `json:"demoAccount,omitempty"`
	// Children are the PIDs of the supervised processes (fixsim, feeder-0, feeder-1): kill -9 one and
	// watch it come back.
	Children map[string]int `json:"children,omitempty"`
}

// devAccount is an account and its API token.
type devAccount struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// devSecrets are generated once per data directory, never fixed in code.
type devSecrets struct {
	AdminToken string `json:"adminToken"`
	// RelayHMACSecret signs the relay's deliveries to the external-system simulator.
	RelayHMACSecret string `json:"relayHmacSecret"`
	// FIXPassword is what the feeders log on to the FIX simulator with.
	FIXPassword string `json:"fixPassword"`
	// DemoAccountID and DemoAccountToken are the demo account kawase dev opens and prints.
	DemoAccountID    string `json:"demoAccountId,omitempty"`
	DemoAccountToken string `json:"demoAccountToken,omitempty"`
}

// devEnv is the infrastructure `kawase dev` runs on: a database and a broker, private or given.
type devEnv struct {
	cfg     config
	log     *zap.SugaredLogger
	dbURL   string
	brokers []string
	pool    *pgxpool.Pool
	secrets devSecrets
	closers []func()
	dataDir string

	httpAddr, grpcAddr     string
	extsim                 string
	fixAddr, fixsimControl string
	children               children
	stateMu                sync.Mutex
}

// runDev runs the whole system on this machine until ctx ends.
func runDev(ctx context.Context, cfg config, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: dev takes no arguments", errUsage)
	}
	cfg.Mode = modeDev
	log := observe.NewLogger(cfg.LogLevel, "dev")
	defer log.Sync()
	env, err := startDevEnv(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer env.close()
	return env.serve(ctx)
}

func startDevEnv(ctx context.Context, cfg config, log *zap.SugaredLogger) (*devEnv, error) {
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	env := &devEnv{cfg: cfg, log: log, dataDir: dataDir}
	steps := []func(context.Context) error{env.loadSecrets, env.startDatabase, env.startKafka}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			env.close()
			return nil, err
		}
	}
	return env, nil
}

func (e *devEnv) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

func (e *devEnv) loadSecrets(context.Context) error {
	path := filepath.Join(e.dataDir, devSecretsFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(b, &e.secrets); err != nil {
			return fmt.Errorf("dev: read %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("dev: %w", err)
	}
	if e.secrets.AdminToken == "" || e.secrets.RelayHMACSecret == "" || e.secrets.FIXPassword == "" {
		if e.secrets.AdminToken == "" {
			e.secrets.AdminToken = "adm_" + randomHex(devTokenBytes)
		}
		if e.secrets.RelayHMACSecret == "" {
			e.secrets.RelayHMACSecret = randomHex(devHMACSecretBytes)
		}
		if e.secrets.FIXPassword == "" {
			e.secrets.FIXPassword = randomHex(devFIXSecretBytes)
		}
		if err := e.saveSecrets(); err != nil {
			return err
		}
	}
	if e.cfg.AdminToken != "" {
		e.secrets.AdminToken = e.cfg.AdminToken
	}
	e.cfg.AdminToken = e.secrets.AdminToken
	if len(e.cfg.RelayHMACSecrets) == 0 {
		e.cfg.RelayHMACSecrets = []string{e.secrets.RelayHMACSecret}
	}
	return nil
}

// saveSecrets writes secrets.json, readable only by its owner.
func (e *devEnv) saveSecrets() error {
	path := filepath.Join(e.dataDir, devSecretsFile)
	out, err := json.MarshalIndent(e.secrets, "", "  ")
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("dev: write %s: %w", path, err)
	}
	return nil
}

func (e *devEnv) startDatabase(ctx context.Context) error {
	e.dbURL = e.cfg.DatabaseURL
	if e.dbURL == "" {
		e.log.Infow("starting private postgres", "dir", filepath.Join(e.dataDir, devPGSubdir))
		l, err := pgdb.StartLocal(ctx, filepath.Join(e.dataDir, devPGSubdir))
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		e.closers = append(e.closers, func() {
			if err := l.Stop(); err != nil {
				e.log.Errorw("stopping postgres", zap.Error(err))
			}
		})
		e.dbURL = l.URL()
	}
	pool, err := pgdb.Open(ctx, e.dbURL)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	e.pool = pool
	e.closers = append(e.closers, pool.Close)
	return nil
}

func (e *devEnv) startKafka(ctx context.Context) error {
	e.brokers = e.cfg.KafkaBrokers
	if len(e.brokers) == 0 {
		dir := filepath.Join(e.dataDir, devKafkaSubdir)
		b, err := broker.StartEmbedded(broker.EmbeddedOptions{Port: e.cfg.KafkaPort, DataDir: dir})
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		e.log.Infow("embedded kafka broker started", "addr", b.Addr(), "dir", dir)
		e.closers = append(e.closers, b.Close)
		e.brokers = []string{b.Addr()}
	}
	if err := broker.EnsureTopics(ctx, e.brokers, eventing.Topics()); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	drift, err := broker.CheckPartitions(ctx, e.brokers, eventing.Topics())
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	remedy := "recreate the topic on the broker"
	if len(e.cfg.KafkaBrokers) == 0 {
		remedy = "stop kawase dev and delete " + filepath.Join(e.dataDir, devKafkaSubdir) + ", losing the local topics' records"
	}
	for _, d := range drift {
		// It still works (every producer and consumer asks the broker), but not as documented.
		e.log.Warnw("a topic's partition count differs from the catalogue; kept as it is, since adding "+
			"partitions would reorder keys", "topic", d.Topic, "partitions", d.Have, "catalogue", d.Catalogued,
			"remedy", remedy)
	}
	return nil
}

// serve runs every built function in this process: REST on the single local HTTP port, gRPC on the
// local gRPC port, and each Service's own handler under /_svc/<name>/ where the local dispatcher
// delivers its events. It writes dev.json once everything listens.
func (e *devEnv) serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", e.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("dev: listen on %s: %w", e.cfg.HTTPAddr, err)
	}
	defer ln.Close()
	grpcLn, err := net.Listen("tcp", e.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("dev: listen on %s: %w", e.cfg.GRPCAddr, err)
	}
	defer grpcLn.Close()
	e.httpAddr, e.grpcAddr = ln.Addr().String(), grpcLn.Addr().String()
	extsimRun, err := e.startExtsim()
	if err != nil {
		return err
	}
	reg, health, mux := observe.NewRegistry(), observe.NewHealth(), http.NewServeMux()
	observe.Mount(mux, reg, health)
	// Profiles of the whole local system, for finding where its time goes (local mode only).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	health.AddCheck("database", e.pool.Ping)
	health.AddCheck("kafka", e.pingKafka)
	gs := grpc.NewServer()
	d := componentDeps{cfg: e.cfg, log: e.log, reg: reg, health: health, dbURL: e.dbURL, brokers: e.brokers,
		ratesGRPC: grpcLn.Addr().String(), ledgerGRPC: grpcLn.Addr().String()}
	runs, built, err := e.startComponents(ctx, d, mux, gs)
	if err != nil {
		return err
	}
	set, err := manifest.Load(manifests.FS)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	dispatchRun, err := e.startDispatcher(set, e.httpAddr, built, mux, d)
	if err != nil {
		return err
	}
	// Whatever no function serves is answered as problem+json, as in a cluster each Service does.
	mux.HandleFunc("/", observe.Unrouted(mux))
	specs, err := e.devChildren(set)
	if err != nil {
		return err
	}
	childRuns, err := e.superviseChildren(specs)
	if err != nil {
		return err
	}
	runs = append(append(runs, dispatchRun, e.announceDemo), childRuns...)
	if extsimRun != nil {
		runs = append(runs, extsimRun)
	}
	if err := e.writeState(); err != nil {
		return err
	}
	e.log.Infow("kawase dev is up", "http", "http://"+ln.Addr().String(), "grpc", grpcLn.Addr().String(),
		"kafka", strings.Join(e.brokers, ","), "state", filepath.Join(e.dataDir, devStateFile))
	fmt.Printf("kawase dev: http://%s  (gRPC %s, kafka %s; state in %s; Ctrl-C stops)\n",
		ln.Addr(), grpcLn.Addr(), strings.Join(e.brokers, ","), filepath.Join(e.dataDir, devStateFile))
	runs = append(runs,
		func(ctx context.Context) error { return observe.Serve(ctx, ln, mux) },
		func(ctx context.Context) error { return serveGRPC(ctx, gs, grpcLn) })
	return observe.RunAll(ctx, runs...)
}

// startComponents builds every function, mounts it, and returns its background work.
func (e *devEnv) startComponents(ctx context.Context, d componentDeps, mux *http.ServeMux, gs *grpc.Server) ([]func(context.Context) error, map[string]bool, error) {
	var runs []func(context.Context) error
	built := map[string]bool{}
	for _, name := range componentOrder {
		d.log = e.log.Named(name)
		c, err := components[name](ctx, d)
		if errors.Is(err, errNotBuilt) {
			e.log.Warnw("function not built yet; running without it", "function", name)
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("dev: start %s: %w", name, err)
		}
		built[name] = true
		if c.close != nil {
			e.closers = append(e.closers, c.close)
		}
		prefix := devServicePath(name)
		mux.Handle(prefix+"/", http.StripPrefix(prefix, c.handler))
		for _, p := range c.public {
			mux.Handle(p, c.handler)
		}
		if c.grpc != nil {
			c.grpc(gs)
		}
		if c.run != nil {
			runs = append(runs, c.run)
		}
	}
	return runs, built, nil
}

// devServicePath is where kawase dev mounts a Knative Service's own handler on its HTTP port; the
// local dispatcher delivers to http://<http addr><devServicePath(name)>/.
func devServicePath(name string) string { return "/_svc/" + name }

func serveGRPC(ctx context.Context, gs *grpc.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve grpc on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
		gs.GracefulStop()
		return nil
	}
}

func (e *devEnv) pingKafka(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, kafkaPingMs*time.Millisecond)
	defer cancel()
	conn, err := (&kafka.Dialer{}).DialContext(ctx, "tcp", e.brokers[0])
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Brokers(); err != nil {
		return fmt.Errorf("kafka metadata: %w", err)
	}
	return nil
}

// writeState writes dev.json atomically; supervised children rewrite it when their PIDs change.
func (e *devEnv) writeState() error {
	e.stateMu.Lock()
	defer e.stateMu.Unlock()
	st := devState{HTTP: "http://" + e.httpAddr, GRPC: e.grpcAddr, Kafka: strings.Join(e.brokers, ","),
		Database: e.dbURL, AdminToken: e.secrets.AdminToken, PID: os.Getpid(), Extsim: e.extsim,
		FIX: e.fixAddr, FixsimControl: e.fixsimControl, Children: e.children.snapshot()}
	if e.secrets.DemoAccountID != "" {
		st.DemoAccount = &devAccount{ID: e.secrets.DemoAccountID, Token: e.secrets.DemoAccountToken}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	path := filepath.Join(e.dataDir, devStateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("dev: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("dev: write %s: %w", path, err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return hex.EncodeToString(b)
}
