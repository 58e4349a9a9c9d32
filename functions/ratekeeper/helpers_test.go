package ratekeeper_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe/metrictest"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	"github.com/kawase-fx/kawase/functions/ratekeeper"
)

const testTimeout = 90 * time.Second

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// effectsTrigger records every accepted rate in a table of the test database, inside the keeper's
// transaction, so the test sees exactly the effects that committed.
type effectsTrigger struct{}

func (effectsTrigger) OnRate(ctx context.Context, q ratekeeper.Querier, r *eventing.RateV1) error {
	_, err := q.Exec(ctx, `INSERT INTO public.effects (rate_id, epoch) VALUES ($1, $2)`, r.EventID(), r.Epoch)
	return err
}

// keeperEnv is a running keeper on a fresh database behind a real HTTP server.
type keeperEnv struct {
	pool   *pgxpool.Pool
	keeper *ratekeeper.Keeper
	reg    *prometheus.Registry
	srv    *httptest.Server
}

func startKeeper(t testing.TB, cfg ratekeeper.Config) *keeperEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	pool := pgtest.Pool(t, func(ctx context.Context, url string) error {
		if err := ratekeeper.Migrate(ctx, url); err != nil {
			return err
		}
		return ratekeeper.Migrate(ctx, url) // migrating twice is a no-op (replicas starting together)
	})
	if _, err := pool.Exec(ctx, `CREATE TABLE public.effects (rate_id text NOT NULL, epoch bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	k, err := ratekeeper.New(pool, effectsTrigger{}, cfg, zap.NewNop().Sugar(), reg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("keeper run: %v", err)
		}
	})
	srv := httptest.NewServer(k.Handler())
	t.Cleanup(srv.Close)
	return &keeperEnv{pool: pool, keeper: k, reg: reg, srv: srv}
}

// quote is one provider quote: what both feeders would read off the FIX session.
func quote(pair fx.Pair, i int, base time.Time, step time.Duration) eventing.RateV1 {
	spec, err := fx.Lookup(pair)
	if err != nil {
		panic(err)
	}
	pip := decimal.New(1, -spec.Precision)
	bid := spec.ReferenceMid.Add(pip.Mul(decimal.NewFromInt(int64((i*37)%21 - 10))))
	return eventing.RateV1{Pair: pair, Bid: bid, Ask: bid.Add(pip.Mul(decimal.NewFromInt(3))),
		BidSize: decimal.NewFromInt(1_000_000), AskSize: decimal.NewFromInt(1_000_000),
		ProviderTime: base.Add(time.Duration(i) * step), QuoteID: strconv.Itoa(1000 + i),
		Session: "FIX.4.4:KAWASE->PROVIDER", MsgSeqNum: i + 1, Seq: int64(i), ReceivedAt: time.Now().UTC()}
}

func withEpoch(r eventing.RateV1, epoch int64) eventing.RateV1 {
	r.Epoch = epoch
	return r
}

func rateEvent(t testing.TB, r eventing.RateV1) cloudevents.Event {
	t.Helper()
	e, err := eventing.NewEvent(eventing.TypeRate, r.EventID(), &r)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// delivery is the keeper's answer to one POST.
type delivery struct {
	status  int
	outcome string
	code    string
	body    string
}

// deliver POSTs e in binary mode, as Knative's dispatcher does.
func deliver(ctx context.Context, client *http.Client, url string, e cloudevents.Event) (delivery, error) {
	req, err := cehttp.NewHTTPRequestFromEvent(ctx, url, e)
	if err != nil {
		return delivery{}, err
	}
	return do(client, req)
}

func do(client *http.Client, req *http.Request) (delivery, error) {
	resp, err := client.Do(req)
	if err != nil {
		return delivery{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return delivery{}, err
	}
	var v struct{ Outcome, Code string }
	_ = json.Unmarshal(body, &v)
	return delivery{status: resp.StatusCode, outcome: v.Outcome, code: v.Code, body: string(body)}, nil
}

func mustDeliver(t *testing.T, url string, r eventing.RateV1) delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	d, err := deliver(ctx, http.DefaultClient, url, rateEvent(t, r))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// counter returns the value of kawase_ratekeeper_rates_total{outcome}.
func counter(t *testing.T, reg *prometheus.Registry, outcome ratekeeper.Outcome) float64 {
	t.Helper()
	v, err := metrictest.Value(reg, "kawase_ratekeeper_rates_total", map[string]string{"outcome": string(outcome)})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func queryInt(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func mustf(t *testing.T, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		t.Fatalf(format, args...)
	}
}
