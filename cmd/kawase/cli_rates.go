package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/functions/rates/client"
)

// runRatesCLI is `kawase rates watch [PAIRS]`: the live rate stream in the terminal, from KAWASE_URL or
// the running kawase dev, until Ctrl-C.
func runRatesCLI(ctx context.Context, cfg config, args []string) error {
	if len(args) == 0 || args[0] != "watch" || len(args) > 2 {
		return fmt.Errorf("%w: rates watch [PAIRS]", errUsage)
	}
	var pairs []fx.Pair
	if len(args) == 2 {
		var err error
		if pairs, err = fx.ParsePairList(args[1]); err != nil {
			return fmt.Errorf("%w: rates watch: %v", errUsage, err)
		}
	}
	base := cfg.URL
	if base == "" {
		t, err := devStateTarget(cfg.DataDir)
		if err != nil {
			return fmt.Errorf("rates watch: no KAWASE_URL and no running kawase dev: %w", err)
		}
		base = t.URL
	}
	err := client.Watch(ctx, strings.TrimSuffix(base, "/"), pairs, os.Stdout)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
