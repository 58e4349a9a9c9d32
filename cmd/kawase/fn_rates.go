package main

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kawase-fx/kawase/functions/rates"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// newRatesComponent builds the rates function: it tails kawase.rates itself (every replica, every
// partition), serves the REST API, the SSE stream and the rate board on $PORT and RateService on
// gRPC, proxies candles from the ratekeeper's CandleService, and is ready once it holds every pair.
func newRatesComponent(ctx context.Context, d componentDeps) (*component, error) {
	var (
		candles ratesv1.CandleServiceClient
		conn    *grpc.ClientConn
	)
	if addr := candlesAddr(d); addr != "" {
		var err error
		conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("rates: candles client for %s: %w", addr, err)
		}
		candles = ratesv1.NewCandleServiceClient(conn)
	}
	svc, err := rates.New(rates.Config{Brokers: d.brokers, Pairs: d.cfg.Pairs,
		StaleAfter: d.cfg.RatesStaleAfter, ConflateInterval: d.cfg.RatesConflate}, candles, d.log, d.reg)
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	if d.cfg.Mode != modeDev {
		// A replica takes traffic only with every pair. kawase dev's single /readyz says the process and
		// its infrastructure are up; it must not wait for rates the feeder has not published yet.
		d.health.AddCheck("rates_snapshot", svc.Ready)
	}
	c := &component{handler: svc.Handler(), public: svc.Routes(), grpc: svc.RegisterGRPC, run: svc.Run}
	if conn != nil {
		c.close = func() { conn.Close() }
	}
	return c, nil
}

// candlesAddr is where the ratekeeper's CandleService answers: KAWASE_RATEKEEPER_GRPC in a cluster;
// kawase dev serves every gRPC service on one port (the one the rates service is reached at). With
// neither, the candles endpoint answers 503.
func candlesAddr(d componentDeps) string {
	if d.cfg.RatekeeperGRPC != "" {
		return d.cfg.RatekeeperGRPC
	}
	if d.cfg.Mode == modeDev {
		return d.ratesGRPC
	}
	return ""
}
