package main

import (
	"context"
	"fmt"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
)

// newRatekeeperComponent builds the ratekeeper function: the KafkaSource on kawase.rates delivers to
// its handler at POST /, it serves CandleService on gRPC for the rates service, and its background
// work commits rates in batches and prunes old ticks.
func newRatekeeperComponent(ctx context.Context, d componentDeps) (*component, error) {
	if err := ratekeeper.Migrate(ctx, d.dbURL); err != nil {
		return nil, fmt.Errorf("ratekeeper: %w", err)
	}
	pool, err := pgdb.Open(ctx, d.dbURL)
	if err != nil {
		return nil, fmt.Errorf("ratekeeper: %w", err)
	}
	k, err := ratekeeper.New(pool, nil, ratekeeper.Config{}, d.log, d.reg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	d.health.AddCheck("ratekeeper_database", pool.Ping)
	return &component{handler: k.Handler(), grpc: k.RegisterGRPC, run: k.Run, close: pool.Close}, nil
}
