package main

import (
	"context"
	"errors"
)

// runExtsim runs the external-system simulator (issue 7).
func runExtsim(ctx context.Context, cfg config, args []string) error {
	return errors.New("extsim: not built yet")
}
