package main

import (
	"context"
	"fmt"
)

// newRatesComponent builds the rates function.
func newRatesComponent(ctx context.Context, d componentDeps) (*component, error) {
	return nil, fmt.Errorf("rates: %w", errNotBuilt)
}
