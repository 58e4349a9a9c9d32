package main

import (
	"context"
	"fmt"
)

// newRatekeeperComponent builds the ratekeeper function.
func newRatekeeperComponent(ctx context.Context, d componentDeps) (*component, error) {
	return nil, fmt.Errorf("ratekeeper: %w", errNotBuilt)
}
