package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// functionRunner runs one Knative Service's function until ctx ends.
type functionRunner func(ctx context.Context, cfg config) error

// functions maps `kawase serve <name>` to its runner; each issue that builds a function adds it.
var functions = map[string]functionRunner{}

// runServe runs one function as a Knative Service would: listening on $PORT.
func runServe(ctx context.Context, cfg config, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: serve takes one function name (%s)", errUsage, functionNames())
	}
	fn, ok := functions[args[0]]
	if !ok {
		return fmt.Errorf("%w: no function %q (have: %s)", errUsage, args[0], functionNames())
	}
	if err := cfg.requireProdSettings(args[0]); err != nil {
		return err
	}
	return fn(ctx, cfg)
}

func functionNames() string {
	names := make([]string, 0, len(functions))
	for n := range functions {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none built yet"
	}
	return strings.Join(names, ", ")
}
