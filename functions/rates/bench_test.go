package rates_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/functions/rates"
	"github.com/kawase-fx/kawase/functions/rates/loadtest"
)

// benchConcurrency is the number of keep-alive clients of the GET benchmarks.
const benchConcurrency = 32

// benchService is a rates service fed in-process with every pair changing every 50 ms (1,000
// rates/s), served as kawase serve does (observe.Mount plus the handler) on a real listener.
func benchService(b *testing.B, cfg rates.Config) (*rates.Service, *httptest.Server) {
	b.Helper()
	svc, err := rates.New(cfg, nil, zap.NewNop().Sugar(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = svc.Run(ctx); done <- struct{}{} }()
	go func() { feed(ctx, svc); done <- struct{}{} }()
	mux := http.NewServeMux()
	observe.Mount(mux, prometheus.NewRegistry(), observe.NewHealth())
	mux.Handle("/", svc.Handler())
	srv := httptest.NewServer(mux)
	b.Cleanup(func() {
		cancel()
		srv.CloseClientConnections()
		srv.Close()
		<-done
		<-done
	})
	for svc.Ready(ctx) != nil {
		time.Sleep(10 * time.Millisecond)
	}
	return svc, srv
}

// feed applies a new quote of every pair every 50 ms, as the FIX provider sends them.
func feed(ctx context.Context, svc *rates.Service) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for i := 1; ; i++ {
		for _, spec := range fx.Pairs() {
			r := quote(spec.Pair, i%1000, 1)
			r.QuoteID, r.ProviderTime, r.ReceivedAt = fmt.Sprint(i), time.Now(), time.Now()
			svc.Apply(&r)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// BenchmarkGetRates drives GET /v1/rates (all 50 pairs) with benchConcurrency keep-alive wire clients
// while rates change at 1,000/s, then the same number of requests against a bare net/http server
// answering the same bytes, and reports both and their ratio: the uncompressed board (about 6 KB),
// the gzipped one (as browsers ask), and revalidation (mostly 304).
func BenchmarkGetRates(b *testing.B) {
	for _, c := range []struct {
		name, acceptEncoding string
		revalidate           bool
	}{{"identity", "", false}, {"gzip", "gzip", false}, {"revalidate", "", true}} {
		b.Run(c.name, func(b *testing.B) {
			_, srv := benchService(b, rates.Config{})
			body, encoding := fetch(b, srv.URL+"/v1/rates", c.acceptEncoding)
			bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if encoding != "" {
					w.Header().Set("Content-Encoding", encoding)
				}
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				_, _ = w.Write(body)
			}))
			b.Cleanup(bare.Close)
			b.ResetTimer()
			kawase := runLoad(b, srv.URL+"/v1/rates", c.revalidate, c.acceptEncoding)
			b.StopTimer()
			plain := runLoad(b, bare.URL, false, c.acceptEncoding)
			b.ReportMetric(kawase.RequestsPerSec, "req/s")
			b.ReportMetric(float64(kawase.P50.Microseconds())/1000, "p50_ms")
			b.ReportMetric(float64(kawase.P99.Microseconds())/1000, "p99_ms")
			b.ReportMetric(plain.RequestsPerSec, "bare_req/s")
			b.ReportMetric(kawase.RequestsPerSec/plain.RequestsPerSec, "ratio_to_bare")
			if c.revalidate {
				b.ReportMetric(float64(kawase.NotModified)/float64(kawase.Requests), "share_304")
			}
		})
	}
}

// fetch gets url as the load will (not decompressed) and returns the body and its Content-Encoding.
func fetch(b *testing.B, url, acceptEncoding string) ([]byte, string) {
	b.Helper()
	body, enc, err := loadtest.Fetch(b.Context(), url, acceptEncoding)
	if err != nil {
		b.Fatal(err)
	}
	return body, enc
}

func runLoad(b *testing.B, url string, revalidate bool, acceptEncoding string) loadtest.Result {
	b.Helper()
	res, err := loadtest.Run(context.Background(), loadtest.Options{URL: url, Concurrency: benchConcurrency,
		Requests: max(b.N, benchConcurrency), Revalidate: revalidate, Wire: true, AcceptEncoding: acceptEncoding})
	if err != nil {
		b.Fatal(err)
	}
	if res.Errors > 0 {
		b.Fatalf("%d of %d requests failed", res.Errors, res.Requests)
	}
	return res
}

// BenchmarkSSEFanout holds many SSE clients on the whole board while every pair changes every 50 ms,
// and reports the p99 delay from the hub publishing an update batch to a client having read all of
// it. Each call measures for a fixed time, so b.N is not used.
func BenchmarkSSEFanout(b *testing.B) {
	for _, clients := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			_, srv := benchService(b, rates.Config{})
			b.ResetTimer()
			res, err := loadtest.Stream(context.Background(), loadtest.StreamOptions{URL: srv.URL + "/v1/rates/stream",
				Clients: clients, Duration: 3 * time.Second})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			if res.Connected != clients || res.Ended > 0 {
				b.Fatalf("streams: %v", res)
			}
			b.ReportMetric(float64(res.LagP50.Microseconds())/1000, "lag_p50_ms")
			b.ReportMetric(float64(res.LagP99.Microseconds())/1000, "lag_p99_ms")
			b.ReportMetric(float64(res.AgeP99.Microseconds())/1000, "rate_age_p99_ms")
			b.ReportMetric(float64(res.Updates)/3, "batches/s")
		})
	}
}
