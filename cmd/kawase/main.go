// Command kawase runs every part of the kawase FX dealing system: one function per Knative Service
// (`kawase serve <function>`), the FIX feeder, the simulators, and the whole system on one machine
// (`kawase dev`).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// errUsage marks a command line that could not be understood; main prints the usage for it.
var errUsage = errors.New("usage")

const usage = `kawase — an FX dealing system

usage:
  kawase dev                      run the whole system on this machine
  kawase serve <function>         run one function (rates, ratekeeper, trading, ledger, relay, deadletters)
  kawase feeder                   run a FIX rate feeder replica
  kawase fixsim                   run the FIX rate simulator
  kawase extsim                   run the external-system simulator
  kawase rates watch [PAIRS]      print the live rates (PAIRS: comma-separated, default all)
  kawase account …                create and inspect accounts (kawase account help)
  kawase order …                  place, list, show and cancel orders (kawase order help)
  kawase dlq list|show|replay|discard   dead letters (as a kn plugin: kn kawase dlq …)
  kawase version                  print the version

Configuration comes from the environment; see the README.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if errors.Is(err, errUsage) {
		fmt.Fprint(os.Stderr, usage)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kawase:", err)
		os.Exit(1)
	}
}

// run reads the configuration once and dispatches to the subcommand.
func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command", errUsage)
	}
	cfg, err := loadConfig(os.Environ())
	if err != nil {
		return err
	}
	if cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	if cfg.MemoryLimitBytes > 0 {
		debug.SetMemoryLimit(cfg.MemoryLimitBytes)
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "dev":
		return runDev(ctx, cfg, rest)
	case "serve":
		return runServe(ctx, cfg, rest)
	case "feeder":
		return runFeeder(ctx, cfg, rest)
	case "fixsim":
		return runFixsim(ctx, cfg, rest)
	case "extsim":
		return runExtsim(ctx, cfg, rest)
	case "rates":
		return runRatesCLI(ctx, cfg, rest)
	case "account", "order":
		return runTradingCLI(ctx, cfg, cmd, rest)
	case "dlq":
		return runDLQ(ctx, cfg, rest)
	case "version":
		fmt.Println(version)
		return nil
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
}

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"
