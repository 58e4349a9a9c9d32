package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/feeder"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// runFeeder runs one FIX feeder replica (issue 4): it stands by warm, campaigns for leadership
// (KAWASE_LEADER_ELECTION: postgres or lease) and, while it leads, holds the FIX session and publishes
// rates. Metrics, /healthz and /readyz (ready once the broker answers) are served on PORT.
func runFeeder(ctx context.Context, cfg config, args []string) error {
	fs := flag.NewFlagSet("feeder", flag.ContinueOnError)
	sender := fs.String("sender-comp-id", fixspec.DefaultFeederCompID, "our FIX SenderCompID")
	target := fs.String("target-comp-id", fixspec.DefaultProviderCompID, "the provider's FIX TargetCompID")
	useTLS := fs.Bool("fix-tls", false, "dial the FIX provider with TLS")
	caFile := fs.String("fix-tls-ca", "", "CA certificate file that verifies the FIX provider")
	incremental := fs.Bool("incremental", false, "ask for MarketDataIncrementalRefresh (35=X) instead of full refreshes")
	leaseNamespace := fs.String("lease-namespace", "", "namespace of the Lease (default: the pod's)")
	leaseName := fs.String("lease-name", feeder.LeaseNameDefault, "name of the Lease the replicas compete for")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: feeder: %v", errUsage, err)
	}
	if err := checkFeederConfig(cfg); err != nil {
		return err
	}
	log := observe.NewLogger(cfg.LogLevel, "feeder").Desugar()
	reg := observe.NewRegistry()
	elector, err := newElector(ctx, cfg, log, *leaseNamespace, *leaseName)
	if err != nil {
		return err
	}
	f, err := feeder.New(feeder.Config{
		FIX: feeder.FIXConfig{Addr: cfg.FIXAddr, SenderCompID: *sender, TargetCompID: *target,
			Username: cfg.FIXUsername, Password: cfg.FIXPassword, TLS: *useTLS, TLSCAFile: *caFile, Incremental: *incremental},
		Pairs: cfg.Pairs, Brokers: cfg.KafkaBrokers, Elector: elector, Logger: log, Metrics: feeder.NewMetrics(reg),
	})
	if err != nil {
		return err
	}
	health := observe.NewHealth()
	health.AddCheck("kafka", func(context.Context) error {
		if !f.Ready() {
			return errors.New("kafka broker not reachable")
		}
		return nil
	})
	mux := http.NewServeMux()
	observe.Mount(mux, reg, health)
	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("feeder: %w", err)
	}
	return observe.RunAll(ctx, f.Run, func(ctx context.Context) error { return observe.Serve(ctx, ln, mux) })
}

func checkFeederConfig(cfg config) error {
	var missing []string
	if cfg.FIXAddr == "" {
		missing = append(missing, "KAWASE_FIX_ADDR")
	}
	if cfg.FIXUsername == "" || cfg.FIXPassword == "" {
		missing = append(missing, "KAWASE_FIX_USERNAME, KAWASE_FIX_PASSWORD")
	}
	if len(cfg.KafkaBrokers) == 0 {
		missing = append(missing, "KAFKA_BROKERS")
	}
	if cfg.LeaderElection == "postgres" && cfg.DatabaseURL == "" {
		missing = append(missing, "DATABASE_URL")
	}
	if len(missing) > 0 {
		return fmt.Errorf("feeder needs %s", strings.Join(missing, ", "))
	}
	return nil
}

// newElector returns the configured leader elector; the PostgreSQL one migrates the feeder schema.
func newElector(ctx context.Context, cfg config, log *zap.Logger, leaseNamespace, leaseName string) (feeder.Elector, error) {
	identity := cfg.PodName
	if identity == "" {
		identity = "feeder"
	}
	if cfg.LeaderElection == "lease" {
		return feeder.NewInClusterLeaseElector(leaseNamespace, leaseName, identity, log)
	}
	if err := feeder.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return nil, fmt.Errorf("feeder: %w", err)
	}
	return feeder.NewPGElector(cfg.DatabaseURL, identity, log), nil
}
