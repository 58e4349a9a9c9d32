package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// Modes: dev mode may fill in generated secrets and local infrastructure; prod mode refuses to.
const (
	modeDev  = "dev"
	modeProd = "prod"
)

// Defaults of the configuration.
const (
	defaultPort          = 8080
	defaultDevHTTPAddr   = "127.0.0.1:8080"
	defaultDevGRPCAddr   = "127.0.0.1:9090"
	defaultKafkaPort     = 9092
	defaultDataDir       = ".run"
	defaultLogLevel      = "info"
	defaultLeaderElector = "postgres"
)

// Garbage collection. Every kawase process keeps a small live heap (tens of MB) and allocates fast
// per rate and per request, so Go's default (collect when the heap has doubled) runs the collector
// several times a second; each cycle stops the world twice and taxes the goroutines serving requests.
// Letting the heap grow to five times the live data (gcPercent) measured a p99 of GET /v1/rates at
// 20,000 req/s 2-3 ms lower. A pod's memory limit (KAWASE_MEMORY_LIMIT, which each manifest writes
// out) caps the heap at memoryLimitPercent of it: near the limit the collector runs as often as it
// must, so the larger target does not make an OOM kill likely. GOGC and GOMEMLIMIT, when set, win.
const (
	gcPercent          = 400
	memoryLimitPercent = 90
)

// config is everything the kawase binary reads from its environment, read once at start-up. Every
// variable is documented in the README's configuration table.
type config struct {
	// Mode is "dev" (kawase dev and its children) or "prod" (KAWASE_MODE).
	Mode string
	// Port is the HTTP port of `kawase serve` and `kawase feeder` (PORT, Knative's runtime contract).
	Port int
	// HTTPAddr is the single local HTTP listener of `kawase dev` (KAWASE_HTTP_ADDR).
	HTTPAddr string
	// GRPCAddr is the local gRPC listener of `kawase dev` (KAWASE_GRPC_ADDR).
	GRPCAddr string
	// DatabaseURL points at PostgreSQL (DATABASE_URL); empty in dev mode means a private cluster.
	DatabaseURL string
	// KafkaBrokers lists host:port pairs (KAFKA_BROKERS); empty in dev mode means the embedded broker.
	KafkaBrokers []string
	// KafkaPort is the embedded broker's port on 127.0.0.1 (KAWASE_KAFKA_PORT).
	KafkaPort int
	// DataDir holds the private database, the broker's data and dev.json (KAWASE_DATA_DIR).
	DataDir string
	// LogLevel is debug, info, warn or error (KAWASE_LOG_LEVEL).
	LogLevel string
	// Pairs are the currency pairs to quote and serve (KAWASE_PAIRS, comma-separated; default all 50).
	Pairs []fx.Pair
	// AdminToken authorizes account administration and dead letters (KAWASE_ADMIN_TOKEN).
	AdminToken string
	// FIXAddr, FIXUsername and FIXPassword reach the rate provider (KAWASE_FIX_*).
	FIXAddr, FIXUsername, FIXPassword string
	// LeaderElection is "postgres" (advisory lock) or "lease" (Kubernetes Lease) (KAWASE_LEADER_ELECTION).
	LeaderElection string
	// PodName identifies this replica in leader election (POD_NAME; default the host name).
	PodName string
	// ExternalURL is where the relay delivers executions (KAWASE_EXTERNAL_URL).
	ExternalURL string
	// RatesStaleAfter is how long a pair may go without a rate before the rates service reports it
	// not tradeable, and RatesConflate the shortest gap between two stream updates of one pair
	// (KAWASE_RATES_STALE_AFTER, KAWASE_RATES_CONFLATE, Go durations; zero: the service's defaults,
	// 5s and 250ms).
	RatesStaleAfter, RatesConflate time.Duration
	// DefaultLeverage (zero: the ledger's default, 25) and Leverage (per pair) are the ledger's
	// leverage, margin = notional / leverage (KAWASE_LEVERAGE, e.g. "default=25,USD_TRY=5,EUR_TRY=5").
	DefaultLeverage decimal.Decimal
	Leverage        map[fx.Pair]decimal.Decimal
	// RelayHMACSecrets are the active signing secrets, newest first (KAWASE_RELAY_HMAC_SECRETS, comma-separated).
	RelayHMACSecrets []string
	// RatesGRPC, LedgerGRPC and RatekeeperGRPC are the gRPC addresses of the rates, ledger and
	// ratekeeper services (KAWASE_RATES_GRPC, KAWASE_LEDGER_GRPC, KAWASE_RATEKEEPER_GRPC).
	RatesGRPC, LedgerGRPC, RatekeeperGRPC string
	// URL and Token are where the CLI (kawase dlq, account, order, rates) reaches the REST API and the
	// bearer token it sends (KAWASE_URL, KAWASE_TOKEN); empty means the running kawase dev's dev.json.
	URL, Token string
	// TimeScale divides every delivery and retry duration; tests use it to run schedules fast
	// (KAWASE_TIME_SCALE, a positive integer, default 1).
	TimeScale int
	// GCPercent is the collector's target set at start-up: gcPercent, or 0 (leave it) when GOGC is set.
	GCPercent int
	// MemoryLimitBytes is the soft heap limit set at start-up: memoryLimitPercent of the container's
	// memory limit (KAWASE_MEMORY_LIMIT, bytes); 0 (leave it) without one or when GOMEMLIMIT is set.
	// A malformed KAWASE_MEMORY_LIMIT is refused even then.
	MemoryLimitBytes int64
}

// envVars are the variables loadConfig knows; any other KAWASE_* variable is a typo and refused.
var envVars = map[string]bool{
	"KAWASE_MODE": true, "KAWASE_HTTP_ADDR": true, "KAWASE_GRPC_ADDR": true, "KAWASE_KAFKA_PORT": true,
	"KAWASE_DATA_DIR": true, "KAWASE_LOG_LEVEL": true, "KAWASE_PAIRS": true, "KAWASE_ADMIN_TOKEN": true,
	"KAWASE_FIX_ADDR": true, "KAWASE_FIX_USERNAME": true, "KAWASE_FIX_PASSWORD": true,
	"KAWASE_LEADER_ELECTION": true, "KAWASE_EXTERNAL_URL": true, "KAWASE_RELAY_HMAC_SECRETS": true,
	"KAWASE_RATES_GRPC": true, "KAWASE_LEDGER_GRPC": true, "KAWASE_RATEKEEPER_GRPC": true, "KAWASE_TIME_SCALE": true,
	"KAWASE_URL": true, "KAWASE_TOKEN": true, "KAWASE_REQUIRE_TOOLS": true, "KAWASE_MEMORY_LIMIT": true,
	"KAWASE_LEVERAGE": true, "KAWASE_RATES_STALE_AFTER": true, "KAWASE_RATES_CONFLATE": true,
}

// loadConfig parses the environment (as os.Environ returns it) into a config.
func loadConfig(environ []string) (config, error) {
	env := make(map[string]string, len(environ))
	var errs []error
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
		if strings.HasPrefix(k, "KAWASE_") && !envVars[k] {
			errs = append(errs, fmt.Errorf("unknown variable %s", k))
		}
	}
	get := func(k, def string) string {
		if v, ok := env[k]; ok && v != "" {
			return v
		}
		return def
	}
	cfg := config{
		Mode:           get("KAWASE_MODE", modeProd),
		HTTPAddr:       get("KAWASE_HTTP_ADDR", defaultDevHTTPAddr),
		GRPCAddr:       get("KAWASE_GRPC_ADDR", defaultDevGRPCAddr),
		DatabaseURL:    get("DATABASE_URL", ""),
		KafkaBrokers:   splitList(get("KAFKA_BROKERS", "")),
		DataDir:        get("KAWASE_DATA_DIR", defaultDataDir),
		LogLevel:       get("KAWASE_LOG_LEVEL", defaultLogLevel),
		AdminToken:     get("KAWASE_ADMIN_TOKEN", ""),
		FIXAddr:        get("KAWASE_FIX_ADDR", ""),
		FIXUsername:    get("KAWASE_FIX_USERNAME", ""),
		FIXPassword:    get("KAWASE_FIX_PASSWORD", ""),
		LeaderElection: get("KAWASE_LEADER_ELECTION", defaultLeaderElector),
		PodName:        get("POD_NAME", get("HOSTNAME", "")),
		ExternalURL:    get("KAWASE_EXTERNAL_URL", ""),
		RatesGRPC:      get("KAWASE_RATES_GRPC", ""),
		LedgerGRPC:     get("KAWASE_LEDGER_GRPC", ""),
		RatekeeperGRPC: get("KAWASE_RATEKEEPER_GRPC", ""),
		URL:            get("KAWASE_URL", ""),
		Token:          get("KAWASE_TOKEN", ""),
	}
	cfg.RelayHMACSecrets = splitList(get("KAWASE_RELAY_HMAC_SECRETS", ""))
	var err error
	if cfg.Port, err = parsePort("PORT", get("PORT", strconv.Itoa(defaultPort))); err != nil {
		errs = append(errs, err)
	}
	if cfg.KafkaPort, err = parsePort("KAWASE_KAFKA_PORT", get("KAWASE_KAFKA_PORT", strconv.Itoa(defaultKafkaPort))); err != nil {
		errs = append(errs, err)
	}
	if cfg.TimeScale, err = strconv.Atoi(get("KAWASE_TIME_SCALE", "1")); err != nil || cfg.TimeScale < 1 {
		errs = append(errs, fmt.Errorf("KAWASE_TIME_SCALE must be a positive integer, not %q", env["KAWASE_TIME_SCALE"]))
	}
	if cfg.GCPercent, cfg.MemoryLimitBytes, err = gcSettings(env); err != nil {
		errs = append(errs, err)
	}
	if cfg.Pairs, err = parsePairs(get("KAWASE_PAIRS", "")); err != nil {
		errs = append(errs, fmt.Errorf("KAWASE_PAIRS: %w", err))
	}
	if cfg.RatesStaleAfter, err = parseDurationIn("KAWASE_RATES_STALE_AFTER", get("KAWASE_RATES_STALE_AFTER", ""), ratesStaleAfterMin, ratesStaleAfterMax); err != nil {
		errs = append(errs, err)
	}
	if cfg.RatesConflate, err = parseDurationIn("KAWASE_RATES_CONFLATE", get("KAWASE_RATES_CONFLATE", ""), ratesConflateMin, ratesConflateMax); err != nil {
		errs = append(errs, err)
	}
	if cfg.DefaultLeverage, cfg.Leverage, err = parseLeverage(get("KAWASE_LEVERAGE", "")); err != nil {
		errs = append(errs, fmt.Errorf("KAWASE_LEVERAGE: %w", err))
	}
	errs = append(errs, cfg.check()...)
	if err := errors.Join(errs...); err != nil {
		return config{}, fmt.Errorf("configuration: %w", err)
	}
	return cfg, nil
}

// gcSettings derives the collector's settings from the environment: Go's own GOGC and GOMEMLIMIT
// take precedence over kawase's defaults.
func gcSettings(env map[string]string) (percent int, limitBytes int64, err error) {
	if env["GOGC"] == "" { // Go reads an empty GOGC as unset too
		percent = gcPercent
	}
	v := env["KAWASE_MEMORY_LIMIT"]
	if v == "" {
		return percent, 0, nil
	}
	limit, perr := strconv.ParseInt(v, 10, 64)
	if perr != nil || limit <= 0 {
		return percent, 0, fmt.Errorf("KAWASE_MEMORY_LIMIT must be a positive number of bytes, not %q", v)
	}
	if env["GOMEMLIMIT"] != "" {
		return percent, 0, nil
	}
	return percent, limit / 100 * memoryLimitPercent, nil
}

func (c config) check() []error {
	var errs []error
	if c.Mode != modeDev && c.Mode != modeProd {
		errs = append(errs, fmt.Errorf("KAWASE_MODE must be dev or prod, not %q", c.Mode))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("KAWASE_LOG_LEVEL must be debug, info, warn or error, not %q", c.LogLevel))
	}
	if c.LeaderElection != "postgres" && c.LeaderElection != "lease" {
		errs = append(errs, fmt.Errorf("KAWASE_LEADER_ELECTION must be postgres or lease, not %q", c.LeaderElection))
	}
	for _, a := range []struct{ name, addr string }{{"KAWASE_HTTP_ADDR", c.HTTPAddr}, {"KAWASE_GRPC_ADDR", c.GRPCAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.name, err))
		}
	}
	return errs
}

// infraNeeds says which shared infrastructure a component cannot run without.
type infraNeeds struct{ database, kafka bool }

// requireProdSettings refuses to run a production component on dev-mode defaults: outside dev mode
// the database and the brokers it needs must be given explicitly.
func (c config) requireProdSettings(component string, needs infraNeeds) error {
	if c.Mode == modeDev {
		return nil
	}
	var missing []string
	if needs.database && c.DatabaseURL == "" {
		missing = append(missing, "DATABASE_URL")
	}
	if needs.kafka && len(c.KafkaBrokers) == 0 {
		missing = append(missing, "KAFKA_BROKERS")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s outside dev mode needs %s", component, strings.Join(missing, ", "))
	}
	return nil
}

func parsePort(name, s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 0 || p > 65535 {
		return 0, fmt.Errorf("%s must be a port number, not %q", name, s)
	}
	return p, nil
}

func parsePairs(s string) ([]fx.Pair, error) {
	if strings.TrimSpace(s) == "" {
		specs := fx.Pairs()
		out := make([]fx.Pair, len(specs))
		for i, sp := range specs {
			out[i] = sp.Pair
		}
		return out, nil
	}
	return fx.ParsePairList(s)
}

// Bounds of the rates service's durations: a staleness limit shorter than a few update cycles
// (50 ms) would flicker. The conflation interval also paces WatchRates, the ledger's only prices,
// and the ledger refuses a quote older than 5 s, so it stays far below that.
const (
	ratesStaleAfterMin = 200 * time.Millisecond
	ratesStaleAfterMax = time.Hour
	ratesConflateMin   = 10 * time.Millisecond
	ratesConflateMax   = time.Second
)

// parseDurationIn reads a Go duration within [lo, hi]; empty is zero (the default).
func parseDurationIn(name, s string, lo, hi time.Duration) (time.Duration, error) {
	if strings.TrimSpace(s) == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < lo || d > hi {
		return 0, fmt.Errorf("%s must be a duration from %v to %v, not %q", name, lo, hi, s)
	}
	return d, nil
}

// leverageMax bounds a configured leverage; no regulator allows more for retail FX.
const leverageMax = 1000

// parseLeverage reads "default=25,USD_TRY=5": the leverage of every pair not listed (optional) and
// per pair, each a positive number up to leverageMax.
func parseLeverage(s string) (decimal.Decimal, map[fx.Pair]decimal.Decimal, error) {
	var def decimal.Decimal
	var per map[fx.Pair]decimal.Decimal
	for _, item := range splitList(s) {
		name, value, ok := strings.Cut(item, "=")
		l, err := decimal.NewFromString(strings.TrimSpace(value))
		if err == nil {
			err = fx.CheckMagnitude(l)
		}
		if !ok || err != nil || !l.IsPositive() || l.GreaterThan(decimal.NewFromInt(leverageMax)) {
			return def, nil, fmt.Errorf("%q is not NAME=LEVERAGE with a leverage above 0 and at most %d", item, leverageMax)
		}
		name = strings.ToUpper(strings.TrimSpace(name))
		if name == "DEFAULT" {
			def = l
			continue
		}
		if _, err := fx.Lookup(fx.Pair(name)); err != nil {
			return def, nil, err
		}
		if per == nil {
			per = map[fx.Pair]decimal.Decimal{}
		}
		if _, dup := per[fx.Pair(name)]; dup {
			return def, nil, fmt.Errorf("%s listed twice", name)
		}
		per[fx.Pair(name)] = l
	}
	return def, per, nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if p := strings.TrimSpace(part); p != "" {
			out = append(out, p)
		}
	}
	return out
}
