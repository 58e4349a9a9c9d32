package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/functions/deadletters"
)

// newDeadlettersComponent builds the deadletters function: the KafkaSource deadletters-to-store
// delivers dead letters to its handler at POST /, its REST API lives under /v1/deadletters (admin
// token), and its background work is the automatic redrive of parked dead letters.
func newDeadlettersComponent(ctx context.Context, d componentDeps) (*component, error) {
	if d.dbURL == "" {
		return nil, errors.New("deadletters needs DATABASE_URL")
	}
	if d.cfg.AdminToken == "" {
		if d.cfg.Mode != modeDev {
			return nil, errors.New("deadletters needs KAWASE_ADMIN_TOKEN")
		}
		d.log.Warnw("no admin token: the dead-letter REST API refuses every request; dead letters are still stored")
	}
	if err := deadletters.Migrate(ctx, d.dbURL); err != nil {
		return nil, fmt.Errorf("deadletters: %w", err)
	}
	pool, err := pgdb.Open(ctx, d.dbURL)
	if err != nil {
		return nil, fmt.Errorf("deadletters: %w", err)
	}
	svc, err := deadletters.New(deadletters.Config{AdminToken: d.cfg.AdminToken, TimeScale: d.cfg.TimeScale},
		pool, d.log, d.reg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	d.health.AddCheck("deadletters_database", pool.Ping)
	return &component{handler: svc.Handler(), public: deadletters.PublicPatterns, run: svc.Run, close: pool.Close}, nil
}
