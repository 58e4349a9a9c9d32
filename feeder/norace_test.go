//go:build !race

package feeder

// raceEnabled: the race detector slows every process about tenfold, so process-level tests lighten
// their load to stay meaningful.
const raceEnabled = false
