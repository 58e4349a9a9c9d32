package main

import (
	"context"
	"fmt"
)

// newDeadlettersComponent builds the deadletters function.
func newDeadlettersComponent(ctx context.Context, d componentDeps) (*component, error) {
	return nil, fmt.Errorf("deadletters: %w", errNotBuilt)
}
