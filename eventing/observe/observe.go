// Package observe is what every kawase component shares to be operable: structured logs (zap, through
// knative.dev/pkg/logging as Knative components do), Prometheus metrics, health and readiness
// endpoints, problem+json errors, and an HTTP server that drains gracefully on SIGTERM.
package observe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"knative.dev/pkg/logging"
)

// Server timeouts and limits.
const (
	readHeaderTimeoutMs = 5_000
	idleTimeoutMs       = 120_000
	shutdownTimeoutMs   = 20_000
	readyCheckTimeoutMs = 2_000
	headerBytesMax      = 64 << 10
)

// NewLogger returns a JSON logger at level ("debug", "info", "warn", "error") named after component.
func NewLogger(level, component string) *zap.SugaredLogger {
	log, _ := logging.NewLogger("", level)
	return log.Named(component)
}

// NewRegistry returns a Prometheus registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Health tracks readiness checks. Liveness (/healthz) only says the process serves HTTP; readiness
// (/readyz) runs every registered check, so a replica takes traffic only once it can serve it.
type Health struct {
	mu     sync.Mutex
	checks map[string]func(context.Context) error
}

// NewHealth returns a Health with no checks (ready).
func NewHealth() *Health {
	return &Health{checks: make(map[string]func(context.Context) error)}
}

// AddCheck registers a named readiness check; it replaces an earlier check of the same name.
func (h *Health) AddCheck(name string, check func(context.Context) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = check
}

// Check runs every readiness check and returns the failures by name.
func (h *Health) Check(ctx context.Context) map[string]string {
	h.mu.Lock()
	names := make([]string, 0, len(h.checks))
	for n := range h.checks {
		names = append(names, n)
	}
	checks := make(map[string]func(context.Context) error, len(h.checks))
	for n, c := range h.checks {
		checks[n] = c
	}
	h.mu.Unlock()
	sort.Strings(names)
	ctx, cancel := context.WithTimeout(ctx, readyCheckTimeoutMs*time.Millisecond)
	defer cancel()
	failures := map[string]string{}
	for _, n := range names {
		if err := checks[n](ctx); err != nil {
			failures[n] = err.Error()
		}
	}
	return failures
}

// Mount adds /healthz, /readyz and /metrics to mux.
func Mount(mux *http.ServeMux, reg *prometheus.Registry, h *Health) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		failures := h.Check(r.Context())
		if len(failures) == 0 {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, "ready")
			return
		}
		WriteProblem(w, Problem{Status: http.StatusServiceUnavailable, Code: "not_ready",
			Title: "not ready", Detail: "readiness checks failing", Extra: map[string]any{"checks": failures}})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
}

// Problem is an RFC 9457 problem detail. Code is kawase's stable, machine-readable error code.
type Problem struct {
	Status int
	Code   string
	Title  string
	Detail string
	Extra  map[string]any
}

// WriteProblem writes p as application/problem+json.
func WriteProblem(w http.ResponseWriter, p Problem) {
	body := map[string]any{"type": "https://kawase.dev/problems/" + p.Code, "title": p.Title,
		"status": p.Status, "code": p.Code}
	if p.Detail != "" {
		body["detail"] = p.Detail
	}
	for k, v := range p.Extra {
		body[k] = v
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(body)
}

// GRPCMux sends gRPC requests (HTTP/2 with an application/grpc content type) to grpcHandler and
// everything else to h, so one port serves both.
func GRPCMux(grpcHandler, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcHandler.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// RunAll runs fns until the first fails or ctx ends, then cancels the rest and waits for them. It
// returns the first error that is not the cancellation itself.
func RunAll(ctx context.Context, fns ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(fns))
	for _, fn := range fns {
		go func() { errc <- fn(ctx) }()
	}
	var first error
	for range fns {
		if err := <-errc; err != nil && first == nil && !errors.Is(err, context.Canceled) {
			first = err
		}
		cancel()
	}
	return first
}

// Serve serves h on ln until ctx ends, then stops accepting and drains in-flight requests for up to
// shutdownTimeoutMs (Knative sends SIGTERM and waits before killing).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeoutMs * time.Millisecond,
		IdleTimeout:       idleTimeoutMs * time.Millisecond,
		MaxHeaderBytes:    headerBytesMax,
		Protocols:         new(http.Protocols),
	}
	// HTTP/1.1 for REST and CloudEvents, and unencrypted HTTP/2 (h2c) so gRPC can share the port, as
	// a Knative Service has only one.
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeoutMs*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down http on %s: %w", ln.Addr(), err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	}
	return nil
}
