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
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
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
}

// devSecrets are generated once per data directory, never fixed in code.
type devSecrets struct {
	AdminToken string `json:"adminToken"`
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
	if e.secrets.AdminToken == "" {
		e.secrets.AdminToken = "adm_" + randomHex(devTokenBytes)
		out, _ := json.MarshalIndent(e.secrets, "", "  ")
		if err := os.WriteFile(path, out, 0o600); err != nil {
			return fmt.Errorf("dev: write %s: %w", path, err)
		}
	}
	if e.cfg.AdminToken != "" {
		e.secrets.AdminToken = e.cfg.AdminToken
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
	return nil
}

// serve runs the single local HTTP listener and writes dev.json once it listens.
func (e *devEnv) serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", e.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("dev: listen on %s: %w", e.cfg.HTTPAddr, err)
	}
	reg := observe.NewRegistry()
	health := observe.NewHealth()
	health.AddCheck("database", e.pool.Ping)
	health.AddCheck("kafka", e.pingKafka)
	mux := http.NewServeMux()
	observe.Mount(mux, reg, health)
	if err := e.writeState(ln.Addr().String()); err != nil {
		ln.Close()
		return err
	}
	e.log.Infow("kawase dev is up", "http", "http://"+ln.Addr().String(), "kafka", strings.Join(e.brokers, ","),
		"state", filepath.Join(e.dataDir, devStateFile))
	fmt.Printf("kawase dev: http://%s  (kafka %s; state in %s; Ctrl-C stops)\n",
		ln.Addr(), strings.Join(e.brokers, ","), filepath.Join(e.dataDir, devStateFile))
	return observe.Serve(ctx, ln, mux)
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

func (e *devEnv) writeState(httpAddr string) error {
	st := devState{HTTP: "http://" + httpAddr, GRPC: e.cfg.GRPCAddr, Kafka: strings.Join(e.brokers, ","),
		Database: e.dbURL, AdminToken: e.secrets.AdminToken, PID: os.Getpid()}
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
