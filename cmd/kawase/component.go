package main

import (
	"context"
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/kawase-fx/kawase/eventing/observe"
)

// component is one function of kawase, as both `kawase serve <name>` (one Knative Service) and
// `kawase dev` (all of them in one process) run it.
type component struct {
	// handler is everything the Service serves on $PORT: CloudEvents deliveries at POST / (for a
	// KafkaSource or Subscription sink) and its REST API.
	handler http.Handler
	// public are the ServeMux patterns of the REST API (e.g. "/v1/rates/"); kawase dev mounts them on
	// its single HTTP port, routed to handler.
	public []string
	// grpc registers the component's gRPC services, if any. `kawase serve` serves them on $PORT
	// (h2c); kawase dev on its gRPC listener.
	grpc func(*grpc.Server)
	// run does the background work (consumers, sweepers) until ctx ends; nil when there is none.
	run func(ctx context.Context) error
	// close releases what the constructor opened (pools, writers); nil when there is nothing.
	close func()
}

// componentDeps is what every component constructor receives: the configuration and the shared
// infrastructure, already resolved (in dev mode: the private database and the embedded broker).
type componentDeps struct {
	cfg     config
	log     *zap.SugaredLogger
	reg     *prometheus.Registry
	health  *observe.Health
	dbURL   string
	brokers []string
	// ratesGRPC and ledgerGRPC are where the rates and ledger gRPC services answer.
	ratesGRPC, ledgerGRPC string
}

// componentFactory builds a component; it must not start background work before run is called.
type componentFactory func(ctx context.Context, d componentDeps) (*component, error)

// components maps each function name (as in `kawase serve <name>` and config/'s Services) to its
// constructor, one file each (fn_<name>.go). The order of componentOrder is the start order in dev.
var components = map[string]componentFactory{
	"rates":       newRatesComponent,
	"ratekeeper":  newRatekeeperComponent,
	"trading":     newTradingComponent,
	"ledger":      newLedgerComponent,
	"relay":       newRelayComponent,
	"deadletters": newDeadlettersComponent,
}

// componentInfra is what each function cannot run without, as its manifest in config/ provides it.
var componentInfra = map[string]infraNeeds{
	"rates":       {kafka: true},
	"ratekeeper":  {database: true, kafka: true},
	"trading":     {database: true, kafka: true},
	"ledger":      {database: true, kafka: true},
	"relay":       {},
	"deadletters": {database: true},
}

var componentOrder = []string{"rates", "ratekeeper", "ledger", "trading", "relay", "deadletters"}

// errNotBuilt marks a function whose issue has not landed yet; kawase dev runs without it.
var errNotBuilt = errors.New("not built yet")
