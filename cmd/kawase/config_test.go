package main

import (
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != modeProd || cfg.Port != 8080 || cfg.KafkaPort != 9092 || cfg.DataDir != ".run" ||
		len(cfg.Pairs) != 50 || cfg.TimeScale != 1 || cfg.HTTPAddr != "127.0.0.1:8080" {
		t.Errorf("defaults = %+v", cfg)
	}
}

// TestGCSettings: kawase's collector target and the soft limit under a pod's memory limit apply unless
// Go's own GOGC and GOMEMLIMIT are set.
func TestGCSettings(t *testing.T) {
	cases := []struct {
		env     []string
		percent int
		limit   int64
	}{
		{nil, gcPercent, 0},
		{[]string{"KAWASE_MEMORY_LIMIT=536870912"}, gcPercent, 536870912 / 100 * memoryLimitPercent},
		{[]string{"GOGC=100", "KAWASE_MEMORY_LIMIT=536870912"}, 0, 536870912 / 100 * memoryLimitPercent},
		{[]string{"GOGC=off", "GOMEMLIMIT=400MiB", "KAWASE_MEMORY_LIMIT=536870912"}, 0, 0},
		{[]string{"GOGC=", "GOMEMLIMIT=", "KAWASE_MEMORY_LIMIT=536870912"}, gcPercent, 536870912 / 100 * memoryLimitPercent},
	}
	for _, c := range cases {
		cfg, err := loadConfig(c.env)
		if err != nil {
			t.Fatalf("%q: %v", c.env, err)
		}
		if cfg.GCPercent != c.percent || cfg.MemoryLimitBytes != c.limit {
			t.Errorf("%q: GCPercent %d, MemoryLimitBytes %d; want %d, %d", c.env, cfg.GCPercent, cfg.MemoryLimitBytes, c.percent, c.limit)
		}
	}
}

func TestLoadConfigRefusesBadValues(t *testing.T) {
	cases := map[string]string{
		"KAWASE_MODE=staging":                   "KAWASE_MODE",
		"PORT=http":                             "PORT",
		"KAWASE_PAIRS=USD_JPY,XXX":              "KAWASE_PAIRS",
		"KAWASE_TIME_SCALE=0":                   "KAWASE_TIME_SCALE",
		"KAWASE_LOG_LEVEL=loud":                 "KAWASE_LOG_LEVEL",
		"KAWASE_PARIS=USD_JPY":                  "unknown variable KAWASE_PARIS",
		"KAWASE_LEADER_ELECTION=zk":             "KAWASE_LEADER_ELECTION",
		"KAWASE_HTTP_ADDR=localhost":            "KAWASE_HTTP_ADDR",
		"KAWASE_MEMORY_LIMIT=512Mi":             "KAWASE_MEMORY_LIMIT",
		"KAWASE_MEMORY_LIMIT=0":                 "KAWASE_MEMORY_LIMIT",
		"KAWASE_RATES_STALE_AFTER=5":            "KAWASE_RATES_STALE_AFTER",
		"KAWASE_RATES_STALE_AFTER=10ms":         "KAWASE_RATES_STALE_AFTER",
		"KAWASE_RATES_CONFLATE=2s":              "KAWASE_RATES_CONFLATE",
		"KAWASE_LEVERAGE=USD_JPY":               "KAWASE_LEVERAGE",
		"KAWASE_LEVERAGE=USD_JPY=0":             "KAWASE_LEVERAGE",
		"KAWASE_LEVERAGE=XXX_YYY=10":            "KAWASE_LEVERAGE",
		"KAWASE_LEVERAGE=default=5000":          "KAWASE_LEVERAGE",
		"KAWASE_LEVERAGE=USD_JPY=1e2000000000":  "KAWASE_LEVERAGE",
		"KAWASE_LEVERAGE=USD_JPY=10,usd_jpy=20": "KAWASE_LEVERAGE",
	}
	if _, err := loadConfig([]string{"GOMEMLIMIT=400MiB", "KAWASE_MEMORY_LIMIT=lots"}); err == nil {
		t.Error("a malformed KAWASE_MEMORY_LIMIT was accepted because GOMEMLIMIT is set")
	}
	for kv, want := range cases {
		_, err := loadConfig([]string{kv})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want it to mention %s", kv, err, want)
		}
	}
}

func TestProdRefusesDevDefaults(t *testing.T) {
	cfg, err := loadConfig([]string{"KAWASE_MODE=prod"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.requireProdSettings("ledger", infraNeeds{database: true, kafka: true}); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("prod without database: %v", err)
	}
	cfg, err = loadConfig([]string{"KAWASE_MODE=prod", "DATABASE_URL=postgres://db/kawase", "KAFKA_BROKERS=k1:9092, k2:9092"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.requireProdSettings("ledger", infraNeeds{database: true, kafka: true}); err != nil {
		t.Errorf("prod with settings: %v", err)
	}
	cfg, _ = loadConfig([]string{"KAWASE_MODE=prod"})
	if err := cfg.requireProdSettings("relay", infraNeeds{}); err != nil {
		t.Errorf("relay needs no database or brokers: %v", err)
	}
	cfg, _ = loadConfig([]string{"KAWASE_MODE=prod", "DATABASE_URL=postgres://db/kawase", "KAFKA_BROKERS=k1:9092, k2:9092"})
	if len(cfg.KafkaBrokers) != 2 || cfg.KafkaBrokers[1] != "k2:9092" {
		t.Errorf("brokers = %q", cfg.KafkaBrokers)
	}
}

func TestLoadConfigLeverage(t *testing.T) {
	cfg, err := loadConfig([]string{"KAWASE_LEVERAGE=default=20, usd_try=5,EUR_TRY=2.5"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.DefaultLeverage.Equal(decimal.NewFromInt(20)) || len(cfg.Leverage) != 2 ||
		!cfg.Leverage["USD_TRY"].Equal(decimal.NewFromInt(5)) || !cfg.Leverage["EUR_TRY"].Equal(decimal.RequireFromString("2.5")) {
		t.Fatalf("leverage: default %s, per pair %v", cfg.DefaultLeverage, cfg.Leverage)
	}
	cfg, err = loadConfig(nil)
	if err != nil || !cfg.DefaultLeverage.IsZero() || cfg.Leverage != nil {
		t.Fatalf("no KAWASE_LEVERAGE: %s %v %v", cfg.DefaultLeverage, cfg.Leverage, err)
	}
}

func TestLoadConfigRatesDurations(t *testing.T) {
	cfg, err := loadConfig([]string{"KAWASE_RATES_STALE_AFTER=2s", "KAWASE_RATES_CONFLATE=100ms"})
	if err != nil || cfg.RatesStaleAfter != 2*time.Second || cfg.RatesConflate != 100*time.Millisecond {
		t.Fatalf("%v %v %v", cfg.RatesStaleAfter, cfg.RatesConflate, err)
	}
	if cfg, err := loadConfig(nil); err != nil || cfg.RatesStaleAfter != 0 || cfg.RatesConflate != 0 {
		t.Fatalf("defaults: %v %v %v", cfg.RatesStaleAfter, cfg.RatesConflate, err)
	}
}
