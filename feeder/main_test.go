package feeder

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
)

// Environment of a feeder child process (the failover test re-executes this test binary).
const (
	childEnv       = "KAWASE_FEEDER_TEST_CHILD"
	childFIXEnv    = "KAWASE_FEEDER_TEST_FIX"
	childBrokerEnv = "KAWASE_FEEDER_TEST_BROKER"
	childDBEnv     = "KAWASE_FEEDER_TEST_DB"
	childPairsEnv  = "KAWASE_FEEDER_TEST_PAIRS"
)

func TestMain(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		os.Exit(runChild(name))
	}
	os.Exit(pgtest.Main(m))
}

// runChild runs one feeder replica with PostgreSQL leader election, logging JSON to stderr, until
// SIGTERM.
func runChild(name string) int {
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log = log.With(zap.String("replica", name))
	var pairs []fx.Pair
	for _, p := range strings.Split(os.Getenv(childPairsEnv), ",") {
		pairs = append(pairs, fx.Pair(p))
	}
	f, err := New(Config{
		FIX:   FIXConfig{Addr: os.Getenv(childFIXEnv), Username: testUser, Password: testPassword},
		Pairs: pairs, Brokers: []string{os.Getenv(childBrokerEnv)}, Logger: log,
		Elector: NewPGElector(os.Getenv(childDBEnv), name, log),
	})
	if err != nil {
		log.Error("feeder", zap.Error(err))
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := f.Run(ctx); err != nil {
		log.Error("feeder", zap.Error(err))
		return 1
	}
	return 0
}
