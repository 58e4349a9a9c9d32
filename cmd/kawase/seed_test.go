package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/broker"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/functions/rates"
	ratesv1 "github.com/kawase-fx/kawase/proto/rates/v1"
)

// checkColdReplicaSeedsFromTheRatekeeper starts one more rates replica against a running kawase dev,
// tailing a rates topic of its own that holds nothing, as the real one does for a pair quiet for
// longer than the tail reaches back (or the retention): it becomes ready, with every pair, only by
// taking each pair's last rate from the real ratekeeper's GetLastTicks over gRPC.
func checkColdReplicaSeedsFromTheRatekeeper(t *testing.T, st devState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), devReadyTimeoutSec*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(st.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	candles := ratesv1.NewCandleServiceClient(conn)
	pairs := fx.Pairs()
	for {
		resp, err := candles.GetLastTicks(ctx, &ratesv1.GetLastTicksRequest{})
		if err == nil && len(resp.Ticks) == len(pairs) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the ratekeeper never held a tick of every pair: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	names := make([]fx.Pair, len(pairs))
	for i, spec := range pairs {
		names[i] = spec.Pair
	}
	reg := prometheus.NewRegistry()
	empty := eventing.Topic{Name: "kawase.rates.cold-replica-test", Partitions: 2}
	if err := broker.EnsureTopics(ctx, []string{st.Kafka}, []eventing.Topic{empty}); err != nil {
		t.Fatal(err)
	}
	svc, err := rates.New(rates.Config{Brokers: []string{st.Kafka}, Topic: empty.Name, Pairs: names}, candles,
		zap.NewNop().Sugar(), reg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	defer func() { stop(); <-done }()
	for svc.Ready(ctx) != nil {
		if ctx.Err() != nil {
			t.Fatalf("the cold replica never became ready: %v", svc.Ready(ctx))
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/rates")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var list struct{ Rates []struct{ Pair string } }
	if err := json.Unmarshal(body, &list); err != nil || len(list.Rates) != len(pairs) {
		t.Fatalf("the cold replica serves %d of %d pairs (%v)", len(list.Rates), len(pairs), err)
	}
	seeded, err := metrictest.Value(reg, "kawase_rates_applied_total", map[string]string{"outcome": "seeded"})
	if err != nil {
		t.Fatal(err)
	}
	if seeded != float64(len(pairs)) {
		t.Fatalf("the cold replica took %v of %d pairs from the ratekeeper", seeded, len(pairs))
	}
}
