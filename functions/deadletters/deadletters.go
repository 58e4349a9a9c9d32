// Package deadletters is the function that keeps every event kawase's Knative dispatchers gave up on.
// The KafkaSource "deadletters-to-store" delivers the dead-letter topic to it: each dead letter is the
// original CloudEvent (same id, attributes and data) plus Knative's knativeerrordest (the subscriber
// that failed), knativeerrorcode (its last HTTP status), knativeerrordata (its answer, base64) and
// knativekafkapartition/knativekafkaoffset (the original record). It stores each one durably in the
// schema "deadletters", categorized as parked (the destination was unavailable) or rejected (it
// refused the event); it shows them over REST, replays them by hand, records discards, and redrives
// parked ones automatically — oldest first, with their original ids, so the receiver dedups — once
// their destination answers again. Dead letters of every source (malformed rates, poison commands,
// executions the external system refused) are the same to it: other types, other destinations.
package deadletters

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/pgdb"
)

// Schema is the Postgres schema the service owns.
const Schema = "deadletters"

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate brings the deadletters schema of the database at url up to date.
func Migrate(ctx context.Context, url string) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		panic(fmt.Sprintf("deadletters: embedded migrations: %v", err))
	}
	return pgdb.Migrate(ctx, url, Schema, sub)
}

// Config is the service's configuration; cmd/kawase maps its environment onto it.
type Config struct {
	// AdminToken guards the REST API (Authorization: Bearer). Empty refuses every REST request;
	// storing dead letters never depends on it.
	AdminToken string
	// TimeScale divides the redrive's intervals and backoff (tests run them fast); zero means 1.
	TimeScale int
	// ReplayTimeout bounds one replay; zero means replayTimeoutMs.
	ReplayTimeout time.Duration
}

// Service stores, shows, replays and redrives dead letters.
type Service struct {
	store         *store
	adminToken    string
	timeScale     int
	replayTimeout time.Duration
	client        *http.Client
	log           *zap.SugaredLogger

	received      *prometheus.CounterVec
	replays       *prometheus.CounterVec
	probes        *prometheus.CounterVec
	redriveErrors prometheus.Counter
}

// New returns the service over an open pool whose database Migrate has prepared; reg (may be nil)
// receives its kawase_deadletters_* metrics.
func New(cfg Config, pool *pgxpool.Pool, log *zap.SugaredLogger, reg prometheus.Registerer) (*Service, error) {
	if pool == nil {
		return nil, errors.New("deadletters: no database pool")
	}
	if cfg.ReplayTimeout <= 0 {
		cfg.ReplayTimeout = replayTimeoutMs * time.Millisecond
	}
	s := &Service{store: &store{pool: pool}, adminToken: cfg.AdminToken, timeScale: max(cfg.TimeScale, 1),
		replayTimeout: cfg.ReplayTimeout, log: log,
		client: &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: cfg.ReplayTimeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        2 * replayWorkersMax,
			MaxIdleConnsPerHost: replayWorkersMax,
			IdleConnTimeout:     90 * time.Second,
		}},
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_deadletters_received_total",
			Help: "Dead letters received, by category (a redelivery of a stored one counts too)."}, []string{"category"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_deadletters_replays_total",
			Help: "Replays of dead letters by trigger (manual, filter, redrive) and result (replayed, parked, rejected)."},
			[]string{"trigger", "result"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_deadletters_redrive_probes_total",
			Help: "Redrive probes of destinations with parked dead letters, by outcome."}, []string{"outcome"}),
		redriveErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "kawase_deadletters_redrive_errors_total",
			Help: "Redrive passes that failed (database trouble); the next pass retries."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.received, s.replays, s.probes, s.redriveErrors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("deadletters: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// PublicPatterns are the ServeMux patterns of the REST API, for kawase dev's single port.
var PublicPatterns = []string{"/v1/deadletters", "/v1/deadletters/"}

// Handler serves dead-letter deliveries at POST / and the REST API under /v1/deadletters.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", s.ingest)
	mux.Handle("GET /v1/deadletters", s.authorized(s.list))
	mux.Handle("GET /v1/deadletters/{id}", s.authorized(s.show))
	mux.Handle("POST /v1/deadletters/{id}/replay", s.authorized(s.replayOne))
	mux.Handle("POST /v1/deadletters/replay", s.authorized(s.replayFilter))
	mux.Handle("DELETE /v1/deadletters/{id}", s.authorized(s.discard))
	mux.HandleFunc("/", observe.Unrouted(mux))
	return mux
}
