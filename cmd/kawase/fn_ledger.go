package main

import (
	"context"
	"fmt"
)

// newLedgerComponent builds the ledger function.
func newLedgerComponent(ctx context.Context, d componentDeps) (*component, error) {
	return nil, fmt.Errorf("ledger: %w", errNotBuilt)
}
