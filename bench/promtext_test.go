package main

import (
	"math"
	"testing"
)

func TestHistogramQuantile(t *testing.T) {
	m := map[string]float64{
		`x_bucket{le="0.01"}`: 50, `x_bucket{le="0.02"}`: 90, `x_bucket{le="0.04"}`: 100, `x_bucket{le="+Inf"}`: 100,
		"x_sum": 1.2, "x_count": 100,
	}
	h := histogramOf(m, "x")
	for _, c := range []struct{ q, want float64 }{{0.5, 0.01}, {0.25, 0.005}, {0.7, 0.015}, {0.99, 0.038}} {
		if got := h.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	earlier := histogramOf(map[string]float64{`x_bucket{le="0.01"}`: 50, `x_bucket{le="0.02"}`: 50,
		`x_bucket{le="0.04"}`: 50, `x_bucket{le="+Inf"}`: 50, "x_count": 50}, "x")
	if d := h.minus(earlier); d.count != 50 || math.Abs(d.quantile(0.5)-0.01625) > 1e-9 {
		t.Errorf("minus: count %v, p50 %v", d.count, d.quantile(0.5))
	}
}

func TestHistogramPlusAndShare(t *testing.T) {
	a := histogramOf(map[string]float64{`x_bucket{le="0.01"}`: 10, `x_bucket{le="0.02"}`: 30, `x_bucket{le="+Inf"}`: 40,
		"x_sum": 0.5, "x_count": 40}, "x")
	b := histogramOf(map[string]float64{`x_bucket{le="0.01"}`: 50, `x_bucket{le="0.02"}`: 58, `x_bucket{le="+Inf"}`: 60,
		"x_sum": 0.25, "x_count": 60}, "x")
	sum := histogram{}.plus(a).plus(b)
	if sum.count != 100 || sum.sum != 0.75 {
		t.Fatalf("plus: count %v, sum %v", sum.count, sum.sum)
	}
	if share, ok := sum.shareAtMost(0.02); !ok || share != 0.88 {
		t.Errorf("share at most 20 ms = %v, %v; want 0.88", share, ok)
	}
	if _, ok := sum.shareAtMost(0.015); ok {
		t.Error("a bound that ends no bucket gave a share")
	}
	if a.count != 40 || a.cumulative[0] != 10 {
		t.Errorf("plus changed its operand: %+v", a)
	}
}

func TestPgbenchTPS(t *testing.T) {
	out := "latency average = 6.9 ms\ninitial connection time = 12.3 ms\ntps = 1722.262932 (without initial connection time)\n"
	if m := pgbenchTPS.FindStringSubmatch(out); m == nil || m[1] != "1722.262932" {
		t.Fatalf("tps = %v", m)
	}
}

func TestParseGoBench(t *testing.T) {
	out := "pkg: github.com/kawase-fx/kawase/feeder\nBenchmarkFeederThroughput-2   \t  200000\t     93729 ns/op\t     10669 rates/s\n"
	figs := parseGoBench(out, "n")
	if len(figs) != 2 || figs[1].Name != "feeder BenchmarkFeederThroughput" || figs[1].Value != "10669" || figs[1].Unit != "rates/s" {
		t.Fatalf("figures %+v", figs)
	}
}
