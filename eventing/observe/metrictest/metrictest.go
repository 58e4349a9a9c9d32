// Package metrictest reads metric values out of a Prometheus registry, for tests that check what a
// component counted.
package metrictest

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Value is the sum, over the series of the counter or gauge name whose labels include every pair in
// labels (nil: every series), of their values; 0 when there is none yet.
func Value(g prometheus.Gatherer, name string, labels map[string]string) (float64, error) {
	families, err := g.Gather()
	if err != nil {
		return 0, fmt.Errorf("gather metrics: %w", err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			if matches(have, labels) {
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return total, nil
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
