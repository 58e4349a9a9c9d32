package main

import (
	"context"
	"errors"
)

// runFeeder runs one FIX feeder replica (issue 4).
func runFeeder(ctx context.Context, cfg config, args []string) error {
	return errors.New("feeder: not built yet")
}
