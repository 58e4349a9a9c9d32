package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/feeder/fixsim"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// Defaults of `kawase fixsim`.
const (
	defaultFixsimAddr       = "127.0.0.1:9878"
	defaultFixsimIntervalMs = 50
)

// runFixsim runs the FIX rate simulator (issue 4) until ctx ends; with -control it also serves the
// control surface (drop, pause, resume, burst, malformed, interval, credentials, stats) over HTTP.
func runFixsim(ctx context.Context, cfg config, args []string) error {
	fs := flag.NewFlagSet("fixsim", flag.ContinueOnError)
	listen := fs.String("listen", firstNonEmpty(cfg.FIXAddr, defaultFixsimAddr), "FIX listen address")
	interval := fs.Duration("interval", defaultFixsimIntervalMs*time.Millisecond, "how often each pair is quoted")
	pairs := fs.String("pairs", joinPairs(cfg.Pairs), "comma-separated pairs to quote")
	user := fs.String("username", cfg.FIXUsername, "Username(553) a Logon must carry")
	pass := fs.String("password", cfg.FIXPassword, "Password(554) a Logon must carry")
	sender := fs.String("sender-comp-id", fixspec.DefaultProviderCompID, "the simulator's SenderCompID")
	target := fs.String("target-comp-id", fixspec.DefaultFeederCompID, "the feeder's CompID")
	certFile := fs.String("tls-cert", "", "TLS certificate file (with -tls-key: accept TLS)")
	keyFile := fs.String("tls-key", "", "TLS private key file")
	control := fs.String("control", "", "HTTP address of the control surface (empty: none)")
	seed := fs.Uint64("seed", 0, "random walk seed (0: from the clock)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: fixsim: %v", errUsage, err)
	}
	list, err := fx.ParsePairList(*pairs)
	if err != nil {
		return fmt.Errorf("%w: fixsim -pairs: %v", errUsage, err)
	}
	log := observe.NewLogger(cfg.LogLevel, "").Desugar()
	sim, err := fixsim.Start(fixsim.Config{Addr: *listen, SenderCompID: *sender, TargetCompID: *target,
		Username: *user, Password: *pass, Pairs: list, Interval: *interval,
		TLSCertFile: *certFile, TLSKeyFile: *keyFile, Seed: *seed, Logger: log})
	if err != nil {
		return err
	}
	defer sim.Close()
	if *control == "" {
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", *control)
	if err != nil {
		return fmt.Errorf("fixsim control: %w", err)
	}
	log.Info("fix simulator control surface listening", zap.String("addr", ln.Addr().String()))
	return observe.Serve(ctx, ln, sim.Handler())
}

func joinPairs(ps []fx.Pair) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ",")
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
