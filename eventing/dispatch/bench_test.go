package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kawase-fx/kawase/eventing"
)

// BenchmarkOrderedDelivery measures how many events per second one ordered consumer delivers from the
// embedded broker to a subscriber that accepts at once (10 partitions, 50 keys: the rates topic's shape),
// offsets committed every commitIntervalMs as in production.
func BenchmarkOrderedDelivery(b *testing.B) {
	const topic, partitions = "b.ordered", 10
	addr := startBroker(b, eventing.Topic{Name: topic, Partitions: partitions})
	events := make([]cloudevents.Event, 0, b.N)
	for n := range b.N {
		events = append(events, testEvent(b, fmt.Sprintf("PAIR_%02d", n%50), n))
	}
	publish(b, addr, topic, events...)
	var delivered atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		delivered.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	d, err := New(Config{Brokers: []string{addr}, Registry: prometheus.NewRegistry()},
		Topology{Consumers: []Consumer{source("bench", topic, srv.URL, Delivery{Timeout: 10 * time.Second})}})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() { done <- d.Run(ctx) }()
	for delivered.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}
