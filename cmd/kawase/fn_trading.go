package main

import (
	"context"
	"fmt"
)

// newTradingComponent builds the trading function.
func newTradingComponent(ctx context.Context, d componentDeps) (*component, error) {
	return nil, fmt.Errorf("trading: %w", errNotBuilt)
}
