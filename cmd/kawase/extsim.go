package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/signature"
	"github.com/kawase-fx/kawase/functions/relay/extsim"
)

// Defaults of `kawase extsim`.
const (
	defaultExtsimAddr  = "127.0.0.1:8090"
	defaultSlowDelayMs = 2_000
)

// secretsFlag collects repeated --secret flags.
type secretsFlag []string

func (s *secretsFlag) String() string { return fmt.Sprintf("%d secrets", len(*s)) }

func (s *secretsFlag) Set(v string) error {
	if len(*s) == signature.SecretsMax {
		return fmt.Errorf("at most %d secrets", signature.SecretsMax)
	}
	*s = append(*s, v)
	return nil
}

// runExtsim runs the external-system simulator: the receiver the relay delivers executions to, with
// opening hours, random failures and slow answers, signature checks, dedup and sequence checks (see
// package extsim for its HTTP interface).
//
//	kawase extsim [--listen 127.0.0.1:8090] [--schedule open=40s,closed=20s | --closed]
//	              [--fail-percent N] [--slow-percent N --slow-delay 2s] [--tolerance 5m] [--secret S]...
//
// It accepts the secrets given with --secret, else KAWASE_RELAY_HMAC_SECRETS (the relay's own).
func runExtsim(ctx context.Context, cfg config, args []string) error {
	fs := flag.NewFlagSet("extsim", flag.ContinueOnError)
	listen := fs.String("listen", defaultExtsimAddr, "address to listen on")
	schedule := fs.String("schedule", "", "opening hours, e.g. open=40s,closed=20s (default: always open)")
	closed := fs.Bool("closed", false, "start closed until POST /control/open (or /control/resume)")
	failPercent := fs.Int("fail-percent", 0, "share of deliveries (0-100) answered with a random 500")
	slowPercent := fs.Int("slow-percent", 0, "share of deliveries (0-100) answered only after --slow-delay")
	slowDelay := fs.Duration("slow-delay", defaultSlowDelayMs*time.Millisecond, "delay of a slow answer")
	tolerance := fs.Duration("tolerance", signature.DefaultToleranceSec*time.Second, "accepted signature timestamp skew")
	var secrets secretsFlag
	fs.Var(&secrets, "secret", "accepted HMAC secret; repeat for two during a rotation (default: KAWASE_RELAY_HMAC_SECRETS)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: extsim: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: extsim takes no arguments, got %q", errUsage, strings.Join(fs.Args(), " "))
	}
	if len(secrets) == 0 {
		secrets = cfg.RelayHMACSecrets
	}
	if len(secrets) == 0 {
		return fmt.Errorf("%w: extsim needs the relay's secret: --secret or KAWASE_RELAY_HMAC_SECRETS", errUsage)
	}
	sched, err := extsim.ParseSchedule(*schedule)
	if err != nil {
		return fmt.Errorf("%w: extsim: %v", errUsage, err)
	}
	log := observe.NewLogger(cfg.LogLevel, "extsim")
	defer log.Sync()
	deliveryURL, serve, err := listenExtsim(*listen, extsim.Config{Secrets: secrets, Tolerance: *tolerance,
		Schedule: sched, StartClosed: *closed, FailPercent: *failPercent, SlowPercent: *slowPercent, SlowDelay: *slowDelay})
	if err != nil {
		return err
	}
	log.Infow("external-system simulator listening", "url", deliveryURL, "schedule", sched.String(),
		"startClosed", *closed, "failPercent", *failPercent, "slowPercent", *slowPercent)
	fmt.Printf("extsim: deliveries to %s, stats at %s (%s)\n", deliveryURL,
		strings.TrimSuffix(deliveryURL, extsim.DeliveryPath)+"/stats", sched)
	return serve(ctx)
}

// listenExtsim starts listening for a simulator on addr and returns its delivery URL (what the relay's
// KAWASE_EXTERNAL_URL should be) and the function that serves it until ctx ends. kawase dev can run the
// simulator in process with it, e.g. with the schedule devExtsimSchedule.
func listenExtsim(addr string, cfg extsim.Config) (deliveryURL string, serve func(context.Context) error, err error) {
	sim, err := extsim.New(cfg)
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("extsim: %w", err)
	}
	return "http://" + ln.Addr().String() + extsim.DeliveryPath,
		func(ctx context.Context) error { return observe.Serve(ctx, ln, sim) }, nil
}

// devExtsimSchedule is the opening hours kawase dev gives the simulator, so a user sees executions
// park while it is closed and the redrive deliver them once it opens.
const devExtsimSchedule = "open=40s,closed=20s"
