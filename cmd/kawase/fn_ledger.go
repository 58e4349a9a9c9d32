package main

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/functions/ledger"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// newLedgerComponent builds the ledger function: the KafkaSource commands-to-ledger delivers order
// commands to its handler at POST /, its gRPC LedgerService answers trading's queries, and its
// background work is the outbox publisher, the trigger/expiry/close-out watcher and the quote feed
// from the rates service's WatchRates stream.
func newLedgerComponent(ctx context.Context, d componentDeps) (*component, error) {
	if d.dbURL == "" {
		return nil, errors.New("ledger needs DATABASE_URL")
	}
	if d.ratesGRPC == "" {
		return nil, errors.New("ledger needs KAWASE_RATES_GRPC (the rates service's gRPC address)")
	}
	if err := ledger.Migrate(ctx, d.dbURL); err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	pool, err := pgdb.Open(ctx, d.dbURL)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	rates, err := grpc.NewClient(d.ratesGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("ledger: rates client: %w", err)
	}
	book := ledger.NewQuoteBook()
	lcfg := ledger.DefaultConfig()
	if d.cfg.DefaultLeverage.IsPositive() {
		lcfg.DefaultLeverage = d.cfg.DefaultLeverage
	}
	lcfg.Leverage = d.cfg.Leverage
	l, err := ledger.New(lcfg, ledger.Deps{Pool: pool, Prices: book, Brokers: d.brokers, Log: d.log,
		Registry: d.reg})
	if err != nil {
		rates.Close()
		pool.Close()
		return nil, err
	}
	d.health.AddCheck("ledger_database", pool.Ping)
	d.health.AddCheck("ledger_quotes", book.Ready)
	follow := func(ctx context.Context) error {
		return ledger.FollowRates(ctx, ratesv1.NewRateServiceClient(rates), book, d.log)
	}
	return &component{
		handler: l.Handler(),
		grpc:    func(s *grpc.Server) { l.RegisterGRPC(s) },
		run:     func(ctx context.Context) error { return observe.RunAll(ctx, l.Run, follow) },
		close: func() {
			l.Close()
			rates.Close()
			pool.Close()
		},
	}, nil
}
