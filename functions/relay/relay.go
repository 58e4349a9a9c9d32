// Package relay is the function that hands executed trades to the external system, whose opening
// hours kawase does not know. It is the subscriber of the Subscription on the KafkaChannel
// "executions": Knative's dispatcher POSTs each kawase.trade.executed.v1 CloudEvent to it, and the
// relay POSTs the execution to the external system, signed (package eventing/signature documents the
// wire contract: Idempotency-Key = execution id, Kawase-Account-Id, Kawase-Account-Seq and the
// Kawase-Signature HMAC over timestamp and body, with two active secrets during a rotation).
//
// Its answer tells the dispatcher what to do, by Knative's delivery rules:
//
//	external 2xx                                   → 204: delivered
//	external closed (5xx), 401/403, 404, 408, 409,
//	425, 429, timeout, connection refused           → 503: retry later (retryable, then parked)
//	external 4xx other than those                   → 422: can never succeed; straight to dead letters,
//	                                                  with the external system's reason in the body
//	not a valid kawase.trade.executed.v1            → 422 (400 when not even a CloudEvent)
//	circuit breaker open                            → 503 at once, no call (see breaker.go)
//
// 401/403 count as unavailable rather than refused: they mean the two sides disagree about secrets,
// which a rotation fixes for every event at once, so the events must be parked (and redriven
// automatically), not rejected one by one. The relay keeps no durable state: the channel's offsets and
// the dead-letter store are the only memory, and the external system dedups by Idempotency-Key.
package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/observe"
	"github.com/kawase-fx/kawase/eventing/signature"
)

// Limits of a delivery.
const (
	// eventBytesMax bounds an incoming CloudEvent (an execution is well under 1 KiB).
	eventBytesMax = 256 << 10
	// externalTimeoutMs bounds one call to the external system; it stays under the Subscription's
	// per-attempt timeout (10 s) so the relay answers before the dispatcher gives up on it.
	externalTimeoutMs = 5_000
	// externalReasonBytesMax bounds the external system's answer quoted in a 422, so the whole
	// problem body fits Knative's 1024-byte knativeerrordata.
	externalReasonBytesMax = 256
	// externalDrainBytesMax is read and dropped from an answer so its connection can be reused.
	externalDrainBytesMax = 64 << 10
	// externalConnsMax bounds idle keep-alive connections to the external system.
	externalConnsMax = 64
)

// Config is the relay's configuration; cmd/kawase maps its environment onto it.
type Config struct {
	// ExternalURL is where executions are POSTed (KAWASE_EXTERNAL_URL).
	ExternalURL string
	// Secrets are the active HMAC secrets, newest first (KAWASE_RELAY_HMAC_SECRETS).
	Secrets []string
	// ExternalTimeout bounds one call; zero means externalTimeoutMs.
	ExternalTimeout time.Duration
	// TimeScale divides the breaker's cooldowns (tests run them fast); zero means 1.
	TimeScale int
}

// Relay delivers executions to the external system.
type Relay struct {
	external *url.URL
	signer   *signature.Signer
	client   *http.Client
	timeout  time.Duration
	breaker  *breaker
	log      *zap.SugaredLogger
	now      func() time.Time

	deliveries *prometheus.CounterVec
	latency    prometheus.Histogram
}

// Outcomes of one delivery, as kawase_relay_deliveries_total counts them.
const (
	outcomeDelivered   = "delivered"
	outcomeUnavailable = "unavailable"
	outcomeRejected    = "rejected"
	outcomeInvalid     = "invalid"
	outcomeBreakerOpen = "breaker_open"
)

// New returns a relay; reg (may be nil) receives its kawase_relay_* metrics.
func New(cfg Config, log *zap.SugaredLogger, reg prometheus.Registerer) (*Relay, error) {
	u, err := url.Parse(cfg.ExternalURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("relay: external url %q must be an absolute http(s) URL", cfg.ExternalURL)
	}
	signer, err := signature.NewSigner(cfg.Secrets)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	if cfg.ExternalTimeout <= 0 {
		cfg.ExternalTimeout = externalTimeoutMs * time.Millisecond
	}
	scale := time.Duration(max(cfg.TimeScale, 1))
	r := &Relay{external: u, signer: signer, timeout: cfg.ExternalTimeout, log: log, now: time.Now,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               http.ProxyFromEnvironment,
				DialContext:         (&net.Dialer{Timeout: cfg.ExternalTimeout, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConns:        externalConnsMax,
				MaxIdleConnsPerHost: externalConnsMax,
				IdleConnTimeout:     90 * time.Second,
				TLSHandshakeTimeout: cfg.ExternalTimeout,
			},
			// A redirect is an answer about the endpoint, not a new endpoint to sign for.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kawase_relay_deliveries_total",
			Help: "Executions the relay handled, by outcome."}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kawase_relay_external_seconds",
			Help: "Duration of calls to the external system.", Buckets: prometheus.DefBuckets}),
	}
	state := prometheus.NewGauge(prometheus.GaugeOpts{Name: "kawase_relay_breaker_state",
		Help: "Circuit breaker over the external system: 0 closed, 1 open, 2 half-open (probing)."})
	r.breaker = newBreaker(breakerFailuresMax, breakerCooldownMs*time.Millisecond/scale,
		breakerCooldownMaxMs*time.Millisecond/scale, func(s int) {
			state.Set(float64(s))
			log.Infow("circuit breaker", "state", breakerStateName(s))
		})
	if reg != nil {
		for _, c := range []prometheus.Collector{r.deliveries, r.latency, state} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("relay: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

func breakerStateName(s int) string {
	return [...]string{"closed", "open", "half-open"}[s]
}

// ServeHTTP takes one CloudEvent delivery (binary or structured mode) at POST /.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || (req.URL.Path != "/" && req.URL.Path != "") {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusNotFound, Code: "not_found",
			Title: "not found", Detail: "the relay takes CloudEvents at POST /"})
		return
	}
	req.Body = http.MaxBytesReader(w, req.Body, eventBytesMax)
	e, err := cehttp.NewEventFromHTTPRequest(req)
	if err != nil {
		r.deliveries.WithLabelValues(outcomeInvalid).Inc()
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "bad_cloudevent",
			Title: "not a CloudEvent", Detail: err.Error()})
		return
	}
	x, err := eventing.Decode[eventing.TradeExecutedV1](*e, eventing.TypeTradeExecuted)
	if err != nil {
		r.deliveries.WithLabelValues(outcomeInvalid).Inc()
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_event",
			Title: "not a valid " + eventing.TypeTradeExecuted, Detail: err.Error()})
		return
	}
	r.respond(w, r.deliver(req.Context(), x, e.Data()))
}

// result is the outcome of one delivery attempt.
type result struct {
	// err is nil when the external system took the execution; otherwise it wraps errUnavailable or
	// errRejected.
	err error
	// externalStatus is the external system's HTTP status, 0 when there was no answer.
	externalStatus int
	// retryAfter is set when the breaker refused the call: how long until it probes.
	retryAfter time.Duration
}

// The two ways a delivery fails.
var (
	// errUnavailable: the external system is closed or unreachable; try again later.
	errUnavailable = errors.New("external system unavailable")
	// errRejected: the external system refused this execution; retrying cannot help.
	errRejected = errors.New("external system refused the execution")
	// errBreakerOpen: the breaker answered for the external system without calling it.
	errBreakerOpen = fmt.Errorf("%w: circuit breaker open", errUnavailable)
)

// deliver POSTs one execution (body is its JSON, exactly as signed) to the external system.
func (r *Relay) deliver(ctx context.Context, x *eventing.TradeExecutedV1, body []byte) result {
	if ok, wait := r.breaker.allow(r.now()); !ok {
		return result{err: errBreakerOpen, retryAfter: wait}
	}
	callCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(callCtx, http.MethodPost, r.external.String(), bytes.NewReader(body))
	if err != nil {
		panic(fmt.Sprintf("relay: request to a checked url: %v", err)) // New checked the URL
	}
	req.Header.Set("Content-Type", eventing.ContentTypeJSON)
	req.Header.Set(signature.HeaderIdempotencyKey, x.ExecutionID)
	req.Header.Set(signature.HeaderAccountID, x.AccountID)
	req.Header.Set(signature.HeaderAccountSeq, strconv.FormatInt(x.AccountSeq, 10))
	req.Header.Set(signature.HeaderSignature, r.signer.Sign(r.now(), body))
	start := time.Now()
	resp, err := r.client.Do(req)
	r.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		if ctx.Err() != nil {
			r.breaker.abandon(r.now()) // our caller went away; that says nothing about the external system
		} else {
			r.breaker.failure(r.now())
		}
		return result{err: fmt.Errorf("%w: %v", errUnavailable, err)}
	}
	defer resp.Body.Close()
	reason, _ := io.ReadAll(io.LimitReader(resp.Body, externalReasonBytesMax))
	_, _ = io.CopyN(io.Discard, resp.Body, externalDrainBytesMax)
	switch classify(resp.StatusCode) {
	case outcomeDelivered:
		r.breaker.success()
		return result{externalStatus: resp.StatusCode}
	case outcomeRejected:
		r.breaker.success() // it answered: it is up
		return result{externalStatus: resp.StatusCode,
			err: fmt.Errorf("%w: HTTP %d: %s", errRejected, resp.StatusCode, printable(reason))}
	}
	r.breaker.failure(r.now())
	return result{externalStatus: resp.StatusCode,
		err: fmt.Errorf("%w: HTTP %d: %s", errUnavailable, resp.StatusCode, printable(reason))}
}

// classify maps the external system's status to an outcome (see the package comment).
func classify(status int) string {
	switch {
	case status >= 200 && status < 300:
		return outcomeDelivered
	case status == http.StatusUnauthorized, status == http.StatusForbidden, status == http.StatusNotFound,
		status == http.StatusRequestTimeout, status == http.StatusConflict, status == http.StatusTooEarly,
		status == http.StatusTooManyRequests:
		return outcomeUnavailable
	case status >= 400 && status < 500:
		return outcomeRejected
	}
	return outcomeUnavailable
}

// respond turns a delivery's result into the answer Knative's dispatcher acts on.
func (r *Relay) respond(w http.ResponseWriter, res result) {
	switch {
	case res.err == nil:
		r.deliveries.WithLabelValues(outcomeDelivered).Inc()
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(res.err, errBreakerOpen):
		r.deliveries.WithLabelValues(outcomeBreakerOpen).Inc()
		w.Header().Set("Retry-After", strconv.Itoa(int(res.retryAfter.Seconds())+1))
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "breaker_open",
			Title: "external system known to be closed", Detail: res.err.Error()})
	case errors.Is(res.err, errRejected):
		r.deliveries.WithLabelValues(outcomeRejected).Inc()
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "external_rejected",
			Title: "the external system refused the execution", Detail: res.err.Error(),
			Extra: map[string]any{"externalStatus": res.externalStatus}})
	default:
		r.deliveries.WithLabelValues(outcomeUnavailable).Inc()
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "external_unavailable",
			Title: "external system unavailable", Detail: res.err.Error(),
			Extra: map[string]any{"externalStatus": res.externalStatus}})
	}
}

// printable makes an answer's first bytes safe to quote: control characters become spaces.
func printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(string(b)))
}
