package main

import (
	"context"
	"fmt"
)

// newRelayComponent builds the relay function.
func newRelayComponent(ctx context.Context, d componentDeps) (*component, error) {
	return nil, fmt.Errorf("relay: %w", errNotBuilt)
}
