package metrictest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestValueSumsMatchingSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"kind", "stage"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	reg.MustRegister(c, g)
	c.WithLabelValues("a", "x").Add(2)
	c.WithLabelValues("a", "y").Add(3)
	c.WithLabelValues("b", "x").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"c_total", nil, 10}, {"c_total", map[string]string{"kind": "a"}, 5},
		{"c_total", map[string]string{"kind": "a", "stage": "x"}, 2}, {"c_total", map[string]string{"kind": "z"}, 0},
		{"g", nil, 7}, {"missing", nil, 0},
	} {
		got, err := Value(reg, tc.name, tc.labels)
		if err != nil || got != tc.want {
			t.Errorf("Value(%s, %v) = %v, %v; want %v", tc.name, tc.labels, got, err, tc.want)
		}
	}
}
