package main

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
)

// scrapeMetrics reads base/metrics (Prometheus text format) into series → value, the series named
// as written, labels included, e.g. `kawase_x_bucket{le="0.001"}`.
func scrapeMetrics(ctx context.Context, base string) (map[string]float64, error) {
	body, err := httpGet(ctx, base+"/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

// histogram is one unlabelled Prometheus histogram: cumulative counts per upper bound.
type histogram struct {
	bounds     []float64
	cumulative []float64
	sum, count float64
}

// histogramOf picks the histogram name out of scraped series.
func histogramOf(m map[string]float64, name string) histogram {
	h := histogram{sum: m[name+"_sum"], count: m[name+"_count"]}
	prefix := name + `_bucket{le="`
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m {
		le, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		bound, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
		if err == nil {
			bs = append(bs, bucket{bound, v})
		}
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	for _, b := range bs {
		h.bounds, h.cumulative = append(h.bounds, b.le), append(h.cumulative, b.n)
	}
	return h
}

// minus is what h observed since earlier (same buckets).
func (h histogram) minus(earlier histogram) histogram {
	d := histogram{bounds: h.bounds, cumulative: slices.Clone(h.cumulative), sum: h.sum - earlier.sum, count: h.count - earlier.count}
	if len(earlier.cumulative) == len(d.cumulative) {
		for i := range d.cumulative {
			d.cumulative[i] -= earlier.cumulative[i]
		}
	}
	return d
}

// plus adds what other observed to h (same buckets); the zero histogram adds nothing.
func (h histogram) plus(other histogram) histogram {
	if h.count == 0 && len(h.bounds) == 0 {
		return other
	}
	d := histogram{bounds: h.bounds, cumulative: slices.Clone(h.cumulative), sum: h.sum + other.sum, count: h.count + other.count}
	if len(other.cumulative) == len(d.cumulative) {
		for i := range d.cumulative {
			d.cumulative[i] += other.cumulative[i]
		}
	}
	return d
}

// shareAtMost is the share of observations at most bound, read off the bucket whose upper bound it
// is; ok is false when no bucket ends there (the share would have to be interpolated).
func (h histogram) shareAtMost(bound float64) (share float64, ok bool) {
	i := slices.Index(h.bounds, bound)
	if i < 0 || h.count == 0 {
		return 0, false
	}
	return h.cumulative[i] / h.count, true
}

// quantile interpolates linearly inside the bucket holding quantile q, as PromQL's
// histogram_quantile does; in the +Inf bucket it answers the highest finite bound.
func (h histogram) quantile(q float64) float64 {
	if h.count == 0 || len(h.bounds) == 0 {
		return math.NaN()
	}
	rank := q * h.count
	lower, below := 0.0, 0.0
	for i, upper := range h.bounds {
		if h.cumulative[i] >= rank {
			if math.IsInf(upper, 1) {
				return lower
			}
			inBucket := h.cumulative[i] - below
			if inBucket == 0 {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/inBucket
		}
		lower, below = upper, h.cumulative[i]
	}
	return lower
}
