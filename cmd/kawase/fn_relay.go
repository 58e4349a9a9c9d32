package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/kawase-fx/kawase/functions/relay"
)

// newRelayComponent builds the relay function: the Subscription on the executions channel delivers
// to its handler at POST /, and it forwards each execution to KAWASE_EXTERNAL_URL, signed with
// KAWASE_RELAY_HMAC_SECRETS. It keeps no state and has no background work.
func newRelayComponent(ctx context.Context, d componentDeps) (*component, error) {
	if d.cfg.ExternalURL == "" {
		if d.cfg.Mode == modeDev {
			// Until kawase dev starts extsim and points the relay at it, dev runs without the relay:
			// the dispatcher's deliveries fail, dead-letter as parked, and are redriven later.
			return nil, fmt.Errorf("relay: %w: no external system configured (KAWASE_EXTERNAL_URL)", errNotBuilt)
		}
		return nil, errors.New("relay needs KAWASE_EXTERNAL_URL")
	}
	r, err := relay.New(relay.Config{ExternalURL: d.cfg.ExternalURL, Secrets: d.cfg.RelayHMACSecrets,
		TimeScale: d.cfg.TimeScale}, d.log, d.reg)
	if err != nil {
		return nil, err
	}
	return &component{handler: r}, nil
}
