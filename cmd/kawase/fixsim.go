package main

import (
	"context"
	"errors"
)

// runFixsim runs the FIX rate simulator (issue 4).
func runFixsim(ctx context.Context, cfg config, args []string) error {
	return errors.New("fixsim: not built yet")
}
