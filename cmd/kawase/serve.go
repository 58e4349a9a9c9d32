package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc"

	"github.com/kawase-fx/kawase/eventing/observe"
)

// runServe runs one function as a Knative Service does: HTTP (and gRPC over h2c) on $PORT.
func runServe(ctx context.Context, cfg config, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: serve takes one function name (%s)", errUsage, functionNames())
	}
	factory, ok := components[args[0]]
	if !ok {
		return fmt.Errorf("%w: no function %q (have: %s)", errUsage, args[0], functionNames())
	}
	if err := cfg.requireProdSettings(args[0], componentInfra[args[0]]); err != nil {
		return err
	}
	log := observe.NewLogger(cfg.LogLevel, args[0])
	defer log.Sync()
	d := componentDeps{cfg: cfg, log: log, reg: observe.NewRegistry(), health: observe.NewHealth(),
		dbURL: cfg.DatabaseURL, brokers: cfg.KafkaBrokers, ratesGRPC: cfg.RatesGRPC, ledgerGRPC: cfg.LedgerGRPC}
	c, err := factory(ctx, d)
	if err != nil {
		return fmt.Errorf("serve %s: %w", args[0], err)
	}
	if c.close != nil {
		defer c.close()
	}
	mux := http.NewServeMux()
	observe.Mount(mux, d.reg, d.health)
	mux.Handle("/", c.handler)
	var h http.Handler = mux
	if c.grpc != nil {
		gs := grpc.NewServer()
		c.grpc(gs)
		h = observe.GRPCMux(gs, mux)
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("serve %s: %w", args[0], err)
	}
	log.Infow("serving", "function", args[0], "addr", ln.Addr().String())
	fns := []func(context.Context) error{func(ctx context.Context) error { return observe.Serve(ctx, ln, h) }}
	if c.run != nil {
		fns = append(fns, c.run)
	}
	return observe.RunAll(ctx, fns...)
}

func functionNames() string {
	names := make([]string, 0, len(components))
	for n := range components {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
