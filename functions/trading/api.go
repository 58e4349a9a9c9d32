package trading

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

// Limits of the REST API.
const (
	bodyBytesMax       = 16 << 10
	pageSizeDefault    = 50
	pageSizeMax        = 500
	ledgerCallMs       = 5_000
	publishTimeoutMs   = 10_000
	unitsMax           = 100_000_000
	clientOrderIDMax   = 64
	orderIDRandomBytes = 12
	accountIDBytes     = 12
)

// reasonAccountNotFound is the ledger's reason for a command about an account it does not have.
const reasonAccountNotFound = "account_not_found"

var clientOrderIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// access is who may call an endpoint.
type access int

const (
	// adminOnly: the admin token; account tokens get 403.
	adminOnly access = iota
	// readAccount: the account's own token or the admin; another account's token gets 404.
	readAccount
	// tradeAccount: the account's own token; the admin gets 403, another account's token 404.
	tradeAccount
)

// handlerFunc is an endpoint after authentication and authorization.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p principal)

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/accounts", s.api("open_account", adminOnly, s.idempotent(s.openAccount, withoutToken)))
	mux.Handle("GET /v1/accounts/{id}", s.api("get_account", readAccount, s.getAccount))
	mux.Handle("POST /v1/accounts/{id}/orders", s.api("place_order", tradeAccount, s.idempotent(s.placeOrder, nil)))
	mux.Handle("GET /v1/accounts/{id}/orders", s.api("list_orders", readAccount, s.listOrders))
	mux.Handle("GET /v1/accounts/{id}/orders/{orderId}", s.api("get_order", readAccount, s.getOrder))
	mux.Handle("DELETE /v1/accounts/{id}/orders/{orderId}", s.api("cancel_order", tradeAccount, s.cancelOrder))
	mux.Handle("GET /v1/accounts/{id}/trades", s.api("list_trades", readAccount, s.listTrades))
	mux.Handle("GET /v1/accounts/{id}/positions", s.api("list_positions", readAccount, s.listPositions))
	mux.Handle("GET /v1/accounts/{id}/transactions", s.api("list_transactions", readAccount, s.listTransactions))
	mux.Handle("POST /{$}", s.api("order_request_event", anyPrincipal, s.orderRequestEvent))
	mux.Handle("POST /v1/order-requests", s.api("order_request_event", anyPrincipal, s.orderRequestEvent))
	mux.HandleFunc("/", observe.Unrouted(mux))
	return mux
}

// anyPrincipal: any authenticated caller; the handler authorizes what the request names.
const anyPrincipal access = -1

// api is the middleware every endpoint shares: metrics, authentication (401), the per-token rate
// limit (429 with Retry-After) and authorization by the {id} of the path (403/404).
func (s *Service) api(route string, a access, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() { s.m.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc() }()
		p, err := s.authenticate(r.Context(), r)
		if err != nil {
			s.authProblem(sw, err)
			return
		}
		if ok, wait := s.limits.allow(p.id, time.Now()); !ok {
			s.m.rateLimited.Inc()
			sw.Header().Set("Retry-After", retryAfter(wait))
			observe.WriteProblem(sw, observe.Problem{Status: http.StatusTooManyRequests, Code: "rate_limited",
				Title: "too many requests", Detail: "this token's request rate is limited; retry after the Retry-After seconds"})
			return
		}
		if !authorize(sw, p, a, r.PathValue("id")) {
			return
		}
		h(sw, r, p)
	})
}

func (s *Service) authProblem(w http.ResponseWriter, err error) {
	var limited *lookupsLimitedError
	if errors.As(err, &limited) {
		s.m.rateLimited.Inc()
		w.Header().Set("Retry-After", retryAfter(limited.wait))
		observe.WriteProblem(w, observe.Problem{Status: http.StatusTooManyRequests, Code: "rate_limited",
			Title: "too many requests", Detail: "too many tokens this replica has not seen; retry after the Retry-After seconds"})
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="kawase"`)
	switch {
	case errors.Is(err, errUnauthenticated):
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnauthorized, Code: "unauthenticated",
			Title: "authentication required", Detail: "send Authorization: Bearer <token>"})
	case errors.Is(err, errBadToken):
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnauthorized, Code: "invalid_token",
			Title: "invalid token"})
	default:
		s.log.Warnw("authentication failed", "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "auth_unavailable",
			Title: "cannot check the token now; retry"})
	}
}

// authorize applies an endpoint's access rule; it answers and returns false when the caller may not.
func authorize(w http.ResponseWriter, p principal, a access, accountID string) bool {
	switch a {
	case adminOnly:
		if !p.admin {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusForbidden, Code: "admin_only",
				Title: "only the admin token may do this"})
			return false
		}
	case readAccount:
		if !p.admin && p.accountID != accountID {
			accountNotFound(w, accountID)
			return false
		}
	case tradeAccount:
		if p.admin {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusForbidden, Code: "admin_cannot_trade",
				Title: "the admin token cannot trade", Detail: "use the account's own token"})
			return false
		}
		if p.accountID != accountID {
			accountNotFound(w, accountID)
			return false
		}
	}
	return true
}

func accountNotFound(w http.ResponseWriter, id string) {
	observe.WriteProblem(w, observe.Problem{Status: http.StatusNotFound, Code: "account_not_found",
		Title: "no such account", Detail: "account " + id})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader records the status for the metrics.
func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// recorder captures a response so it can be stored for idempotency or wrapped in a CloudEvent.
type recorder struct {
	header http.Header
	resp   response
	buf    bytes.Buffer
	wrote  bool
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

// Header is the recorded header.
func (r *recorder) Header() http.Header { return r.header }

// WriteHeader records the first status.
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.resp.status, r.wrote = code, true
	}
}

// Write records body bytes.
func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.buf.Write(b)
}

func (r *recorder) response() response {
	out := r.resp
	if !r.wrote {
		out.status = http.StatusOK
	}
	out.body = r.buf.Bytes()
	out.contentType = r.header.Get("Content-Type")
	out.location = r.header.Get("Location")
	return out
}

// bodyHandler is a POST endpoint that gets its body read and size-checked.
type bodyHandler func(w http.ResponseWriter, r *http.Request, p principal, body []byte, key string)

// idempotent reads the body (413 beyond bodyBytesMax) and applies Idempotency-Key: the same key and
// body answer the first response; another body 422; while the first is in flight 409. store, when
// not nil, turns a response into what may be stored (secrets removed).
func (s *Service) idempotent(h bodyHandler, store func(response) response) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p principal) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		key := r.Header.Get("Idempotency-Key")
		s.withKey(w, r, p, key, requestHash(r.Method, r.URL.Path, body), store, func(w http.ResponseWriter) {
			h(w, r, p, body, key)
		})
	}
}

// withKey runs fn under idempotency key (none when key is empty), answering w; store (when not nil)
// filters what is kept of the response for replays.
func (s *Service) withKey(w http.ResponseWriter, r *http.Request, p principal, key string, hash []byte,
	store func(response) response, fn func(http.ResponseWriter)) {
	if key == "" {
		fn(w)
		return
	}
	if len(key) > idempotencyKeyLengthMax {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_idempotency_key",
			Title: "Idempotency-Key too long", Detail: fmt.Sprintf("at most %d characters", idempotencyKeyLengthMax)})
		return
	}
	c, first, err := s.claimKey(r.Context(), p.id, key, hash)
	switch {
	case errors.Is(err, errKeyReused):
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "idempotency_key_reused",
			Title: "Idempotency-Key used with a different request"})
		return
	case errors.Is(err, errKeyInFlight):
		w.Header().Set("Retry-After", "1")
		observe.WriteProblem(w, observe.Problem{Status: http.StatusConflict, Code: "idempotency_key_in_flight",
			Title: "a request with this Idempotency-Key is still being processed"})
		return
	case err != nil:
		s.log.Warnw("idempotency store failed", "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "idempotency_unavailable",
			Title: "cannot check the Idempotency-Key now; retry"})
		return
	case first != nil:
		w.Header().Set("Idempotent-Replayed", "true")
		first.write(w)
		return
	}
	rec := newRecorder()
	fn(rec)
	resp := rec.response()
	kept := resp
	if store != nil {
		kept = store(resp)
	}
	if err := s.settle(r.Context(), c, kept); err != nil {
		// The client got no answer stored; its retry finds the key in flight until the lease lapses.
		s.log.Warnw("storing the idempotent response failed", "error", err)
	}
	resp.write(w)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, bodyBytesMax))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
				Title: "request body too large", Detail: fmt.Sprintf("at most %d bytes", bodyBytesMax)})
			return nil, false
		}
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "unreadable_body", Title: "cannot read the body"})
		return nil, false
	}
	return body, true
}

// decodeJSON decodes body strictly into v; it answers 400 and returns false on bad JSON.
func decodeJSON(w http.ResponseWriter, body []byte, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_json",
			Title: "malformed JSON body", Detail: err.Error()})
		return false
	}
	if dec.More() {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_json",
			Title: "malformed JSON body", Detail: "trailing data after the JSON value"})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(mustJSON(v))
}

// ledgerProblem answers a failed ledger call.
func (s *Service) ledgerProblem(w http.ResponseWriter, err error, notFound string) {
	switch status.Code(err) {
	case codes.NotFound:
		observe.WriteProblem(w, observe.Problem{Status: http.StatusNotFound, Code: notFound, Title: "not found",
			Detail: status.Convert(err).Message()})
	case codes.InvalidArgument:
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_request",
			Title: "invalid request", Detail: status.Convert(err).Message()})
	case codes.AlreadyExists:
		observe.WriteProblem(w, observe.Problem{Status: http.StatusConflict, Code: "already_exists",
			Title: "already exists", Detail: status.Convert(err).Message()})
	case codes.DeadlineExceeded:
		observe.WriteProblem(w, observe.Problem{Status: http.StatusGatewayTimeout, Code: "ledger_timeout",
			Title: "the ledger did not answer in time; retry"})
	default:
		s.log.Warnw("ledger call failed", "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "ledger_unavailable",
			Title: "the ledger is unavailable; retry", Detail: status.Convert(err).Message()})
	}
}

func ledgerCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, ledgerCallMs*time.Millisecond)
}

// derivedID is prefix + a hash of parts when an idempotency key is given (so a retry that takes a
// lapsed key over names the same account or order), else prefix + random hex.
func derivedID(prefix string, random int, key string, parts ...string) string {
	if key == "" {
		b := make([]byte, random)
		if _, err := rand.Read(b); err != nil {
			panic(fmt.Sprintf("crypto/rand failed: %v", err))
		}
		return prefix + hex.EncodeToString(b)
	}
	h := sha256.New()
	for _, p := range append(parts, key) {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return prefix + hex.EncodeToString(h.Sum(nil)[:random])
}

func accountPath(id string) string { return "/v1/accounts/" + url.PathEscape(id) }

func orderPath(acct, orderID string) string {
	return accountPath(acct) + "/orders/" + url.PathEscape(orderID)
}

// withoutToken is what an account creation keeps for replays: the account without its API token,
// which is stored only hashed. A replay answers the account with an empty token; the token is shown
// once.
func withoutToken(r response) response {
	var a NewAccountView
	if r.status != http.StatusCreated || json.Unmarshal(r.body, &a) != nil {
		return r
	}
	a.Token = ""
	r.body = mustJSON(a)
	return r
}

// openAccount: POST /v1/accounts {currency, deposit} -> 201 with the account and its token.
func (s *Service) openAccount(w http.ResponseWriter, r *http.Request, _ principal, body []byte, key string) {
	var req AccountRequest
	if !decodeJSON(w, body, &req) {
		return
	}
	// The ledger checks all of this too; checked here, a refused account leaves no token row behind.
	ccy := fx.Currency(req.Currency)
	if ccy != "JPY" && ccy != "USD" || fx.CheckMagnitude(req.Deposit) != nil || req.Deposit.IsNegative() ||
		!req.Deposit.Equal(req.Deposit.Truncate(ccy.MinorUnits())) {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_account",
			Title: "invalid account", Detail: "currency is JPY or USD; deposit is a non-negative decimal string with at most the currency's decimals (JPY 0, USD 2)"})
		return
	}
	id := derivedID("acc_", accountIDBytes, key, "admin")
	tok, hash := newToken()
	if err := storeToken(r.Context(), s.pool, hash, id); err != nil {
		s.log.Warnw("storing a token failed", "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "store_unavailable",
			Title: "cannot store the account's token now; retry"})
		return
	}
	ctx, cancel := ledgerCtx(r.Context())
	defer cancel()
	res, err := s.ledger.OpenAccount(ctx, &ledgerv1.OpenAccountRequest{AccountId: id, Currency: req.Currency,
		Deposit: req.Deposit.String()})
	if err != nil {
		// Stored first so the account never exists without its token; not opened (or not known to
		// be), the token goes: a retry under the same key stores a fresh one for the same account.
		if derr := dropToken(r.Context(), s.pool, hash); derr != nil {
			s.log.Warnw("an unused token stays stored (never shown; it names an account not opened by this request)", "error", derr)
		}
	}
	if status.Code(err) == codes.InvalidArgument {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_account",
			Title: "invalid account", Detail: status.Convert(err).Message()})
		return
	}
	if err != nil {
		s.ledgerProblem(w, err, "account_not_found")
		return
	}
	w.Header().Set("Location", accountPath(id))
	writeJSON(w, http.StatusCreated, NewAccountView{AccountView: accountView(res.GetAccount()), Token: tok})
}

func (s *Service) getAccount(w http.ResponseWriter, r *http.Request, _ principal) {
	ctx, cancel := ledgerCtx(r.Context())
	defer cancel()
	a, err := s.ledger.GetAccount(ctx, &ledgerv1.GetAccountRequest{AccountId: r.PathValue("id")})
	if err != nil {
		s.ledgerProblem(w, err, "account_not_found")
		return
	}
	writeJSON(w, http.StatusOK, accountView(a))
}

// sameOrder reports whether the ledger's order o is the order spec asks for.
func sameOrder(o *ledgerv1.Order, spec *eventing.OrderSpec) bool {
	if o.GetPair() != string(spec.Pair) || o.GetSide() != spec.Side || o.GetType() != spec.Type ||
		o.GetTimeInForce() != spec.TimeInForce || o.GetClientOrderId() != spec.ClientOrderID {
		return false
	}
	return sameDecimal(o.GetUnits(), &spec.Units) && sameDecimal(o.GetPrice(), spec.Price) &&
		sameDecimal(o.GetPriceBound(), spec.PriceBound) && sameTime(o.GetGoodTill(), spec.GoodTill)
}

// sameDecimal compares a decimal string of the ledger with an optional decimal ("" is none).
func sameDecimal(s string, d *decimal.Decimal) bool {
	if d == nil || s == "" {
		return d == nil && s == ""
	}
	v, err := decimal.NewFromString(s)
	return err == nil && v.Equal(*d)
}

func sameTime(ts *timestamppb.Timestamp, t *time.Time) bool {
	if t == nil || ts == nil {
		return t == nil && ts == nil
	}
	return ts.AsTime().Equal(*t)
}

// orderSpec checks an order request and fills in the defaults (market orders FOK, pending GTC).
func (req OrderRequest) orderSpec() (*eventing.OrderSpec, error) {
	spec := &eventing.OrderSpec{Pair: req.Pair, Side: req.Side, Units: req.Units, Type: req.Type, Price: req.Price,
		PriceBound: req.PriceBound, TimeInForce: req.TimeInForce, GoodTill: req.GoodTill, ClientOrderID: req.ClientOrderID}
	if spec.Type == "" {
		spec.Type = eventing.OrderTypeMarket
	}
	if spec.GoodTill != nil {
		// The ledger keeps microseconds; the order shows the time it will hold.
		t := spec.GoodTill.UTC().Truncate(time.Microsecond)
		spec.GoodTill = &t
	}
	if spec.TimeInForce == "" {
		spec.TimeInForce = eventing.TimeInForceGTC
		if spec.Type == eventing.OrderTypeMarket {
			spec.TimeInForce = eventing.TimeInForceFOK
		}
	}
	if spec.ClientOrderID != "" && !clientOrderIDPattern.MatchString(spec.ClientOrderID) {
		return nil, fmt.Errorf("%w: clientOrderId must be 1-%d of A-Z a-z 0-9 _ . : -", eventing.ErrInvalid, clientOrderIDMax)
	}
	// Validate first: it bounds every decimal's magnitude before anything compares them.
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Units.GreaterThan(decimal.NewFromInt(unitsMax)) {
		return nil, fmt.Errorf("%w: units above %d", eventing.ErrInvalid, unitsMax)
	}
	// Refused here rather than ignored: the ledger would accept them (commands placed before these
	// checks may carry them) and apply neither.
	if spec.Type != eventing.OrderTypeMarket && spec.PriceBound != nil {
		return nil, fmt.Errorf("%w: priceBound is only for market orders; a %s order fills at its price or better", eventing.ErrInvalid, spec.Type)
	}
	if spec.Type == eventing.OrderTypeMarket && spec.GoodTill != nil {
		return nil, fmt.Errorf("%w: goodTill is only for GTD limit and stop orders", eventing.ErrInvalid)
	}
	return spec, nil
}

// placeOrder: POST /v1/accounts/{id}/orders.
func (s *Service) placeOrder(w http.ResponseWriter, r *http.Request, p principal, body []byte, key string) {
	var req OrderRequest
	if !decodeJSON(w, body, &req) {
		return
	}
	s.place(w, r.Context(), p.accountID, req, key)
}

// place validates an order, publishes its command keyed by account and answers with the ledger's
// decision when it comes within SyncWait, else 202 with the order's URL.
func (s *Service) place(w http.ResponseWriter, ctx context.Context, acct string, req OrderRequest, key string) {
	started := time.Now()
	deadline := started.Add(s.cfg.SyncWait)
	spec, err := req.orderSpec()
	if err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_order",
			Title: "invalid order", Detail: err.Error()})
		return
	}
	orderID := derivedID("o_", orderIDRandomBytes, key, acct)
	cmd := &eventing.OrderCommandV1{CommandID: "place:" + orderID, Kind: eventing.CommandPlace, AccountID: acct,
		OrderID: orderID, Order: spec, RequestedAt: started.UTC()}
	res, ok := s.submit(w, ctx, cmd, deadline)
	if !ok {
		return
	}
	outcome := "decided"
	defer func() { s.m.orderSeconds.WithLabelValues(outcome).Observe(time.Since(started).Seconds()) }()
	w.Header().Set("Location", orderPath(acct, orderID))
	if res == nil {
		// No result came: either the ledger is still on its way, or this is a retry of a command it
		// applied long ago (its result went by before this request listened). The ledger knows which.
		lctx, cancel := ledgerCtx(ctx)
		o, err := s.ledger.GetOrder(lctx, orderKey(acct, orderID))
		cancel()
		if err == nil && !sameOrder(o, spec) {
			// The key named another order, so its record has expired (or a failure released it): the
			// ledger's inbox keeps the id for good and will not place this one under it.
			outcome = "refused"
			observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "idempotency_key_reused",
				Title:  "Idempotency-Key used with a different request",
				Detail: fmt.Sprintf("this key placed order %s, which differs from this request", orderID)})
			return
		}
		if err == nil {
			writeJSON(w, http.StatusCreated, orderView(o))
			return
		}
		// Before the client learns the order's id, note that it was published, so that GET and DELETE
		// find it while the ledger has not applied it yet. Orders decided in time never need the note.
		if err := s.recordSubmitted(ctx, acct, orderID, spec); err != nil {
			s.m.submittedRecordErrors.Inc()
			s.log.Warnw("recording a submitted order failed; GET answers 404 until the ledger applies it",
				"order", orderID, "error", err)
		}
		outcome = "pending"
		writeJSON(w, http.StatusAccepted, submittedView(acct, orderID, spec, nil))
		return
	}
	if res.Reason == reasonAccountNotFound {
		accountNotFound(w, acct)
		return
	}
	writeJSON(w, http.StatusCreated, s.decidedOrder(ctx, acct, orderID, spec, res))
}

// submit publishes cmd and waits for its result until deadline: nil when it did not come (the
// command is on its way; it is never lost once published). It answers 503 and returns false when the
// command could not be published.
func (s *Service) submit(w http.ResponseWriter, ctx context.Context, cmd *eventing.OrderCommandV1, deadline time.Time) (*eventing.OrderResultV1, bool) {
	ev, err := eventing.NewEvent(eventing.TypeOrderCommand, cmd.CommandID, cmd)
	if err != nil {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusUnprocessableEntity, Code: "invalid_order",
			Title: "invalid order", Detail: err.Error()})
		return nil, false
	}
	results, stop := s.results.wait(cmd.CommandID)
	defer stop()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeoutMs*time.Millisecond)
	defer cancel()
	if err := s.commands.Publish(pctx, eventing.TopicCommands, ev); err != nil {
		s.log.Warnw("publishing a command failed", "command", cmd.CommandID, "error", err)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "commands_unavailable",
			Title: "the order could not be submitted; retry", Detail: "retry with the same Idempotency-Key"})
		return nil, false
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case res := <-results:
		return &res, true
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil, true
}

// decidedOrder is the order after the ledger's decision, as the query service shows it: from the
// result when it describes the recorded order, else read from the ledger.
func (s *Service) decidedOrder(ctx context.Context, acct, orderID string, spec *eventing.OrderSpec, res *eventing.OrderResultV1) OrderView {
	if v, ok := placedView(acct, orderID, spec, res); ok {
		return v
	}
	s.m.decidedReads.Inc()
	ctx, cancel := ledgerCtx(ctx)
	defer cancel()
	o, err := s.ledger.GetOrder(ctx, &ledgerv1.GetOrderRequest{AccountId: acct, Key: &ledgerv1.GetOrderRequest_OrderId{OrderId: orderID}})
	if err != nil {
		return submittedView(acct, orderID, spec, res)
	}
	return orderView(o)
}

// orderKey turns the {orderId} path value into a lookup: "@x" is client order id x.
func orderKey(acct, v string) *ledgerv1.GetOrderRequest {
	if cid, ok := strings.CutPrefix(v, "@"); ok {
		return &ledgerv1.GetOrderRequest{AccountId: acct, Key: &ledgerv1.GetOrderRequest_ClientOrderId{ClientOrderId: cid}}
	}
	return &ledgerv1.GetOrderRequest{AccountId: acct, Key: &ledgerv1.GetOrderRequest_OrderId{OrderId: v}}
}

// cancelOrder: DELETE /v1/accounts/{id}/orders/{orderId} cancels a pending order.
func (s *Service) cancelOrder(w http.ResponseWriter, r *http.Request, p principal) {
	s.cancel(w, r.Context(), p.accountID, r.PathValue("orderId"))
}

func (s *Service) cancel(w http.ResponseWriter, ctx context.Context, acct, ref string) {
	deadline := time.Now().Add(s.cfg.SyncWait)
	o, id, spec, err := s.lookupOrder(ctx, acct, ref)
	if err != nil {
		s.ledgerProblem(w, err, "order_not_found")
		return
	}
	if o == nil {
		// Published, not yet applied: the cancel follows the placement through the account's partition.
		o = submittedOrderProto(acct, id, spec)
	}
	if o.GetStatus() != "pending" {
		notPending(w, o.GetId(), o.GetStatus())
		return
	}
	cmd := &eventing.OrderCommandV1{CommandID: "cancel:" + o.GetId(), Kind: eventing.CommandCancel, AccountID: acct,
		OrderID: o.GetId(), RequestedAt: time.Now().UTC()}
	res, ok := s.submit(w, ctx, cmd, deadline)
	if !ok {
		return
	}
	w.Header().Set("Location", orderPath(acct, o.GetId()))
	if res == nil {
		// No result within the wait: the cancel may be queued, or it was decided before (an earlier
		// cancel of the same order, answered from the ledger's inbox without a new result). The
		// ledger's order says which.
		lctx, cancel := ledgerCtx(ctx)
		defer cancel()
		if after, err := s.ledger.GetOrder(lctx, orderKey(acct, o.GetId())); err == nil && after.GetStatus() != "pending" {
			if after.GetStatus() == "cancelled" {
				writeJSON(w, http.StatusOK, orderView(after))
				return
			}
			notPending(w, after.GetId(), after.GetStatus())
			return
		}
		v := orderView(o)
		v.Status = StatusSubmitted
		writeJSON(w, http.StatusAccepted, v)
		return
	}
	if res.Status != eventing.ResultCancelled {
		notPending(w, o.GetId(), res.Reason)
		return
	}
	lctx, cancel := ledgerCtx(ctx)
	defer cancel()
	if after, err := s.ledger.GetOrder(lctx, orderKey(acct, o.GetId())); err == nil {
		o = after
	} else {
		o.Status = "cancelled"
	}
	writeJSON(w, http.StatusOK, orderView(o))
}

func notPending(w http.ResponseWriter, id, why string) {
	observe.WriteProblem(w, observe.Problem{Status: http.StatusConflict, Code: "order_not_pending",
		Title: "only a pending order can be cancelled", Detail: "order " + id + ": " + why})
}

// page reads from (a non-negative cursor) and pageSize (1..pageSizeMax) from the query.
func page(w http.ResponseWriter, r *http.Request) (int64, int32, bool) {
	q := r.URL.Query()
	from := int64(0)
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_cursor",
				Title: "from must be a non-negative integer"})
			return 0, 0, false
		}
		from = n
	}
	size := int64(pageSizeDefault)
	if v := q.Get("pageSize"); v != "" {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 1 || n > pageSizeMax {
			observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_page_size",
				Title: "invalid pageSize", Detail: fmt.Sprintf("pageSize must be 1..%d", pageSizeMax)})
			return 0, 0, false
		}
		size = n
	}
	return from, int32(size), true
}

func nextURL(r *http.Request, next int64, size int32) string {
	if next == 0 {
		return ""
	}
	q := r.URL.Query()
	q.Set("from", strconv.FormatInt(next, 10))
	q.Set("pageSize", strconv.Itoa(int(size)))
	return r.URL.Path + "?" + q.Encode()
}

var orderStatuses = map[string]bool{"": true, "pending": true, "filled": true, "rejected": true, "cancelled": true, "expired": true}

func (s *Service) listOrders(w http.ResponseWriter, r *http.Request, _ principal) {
	from, size, ok := page(w, r)
	if !ok {
		return
	}
	st := r.URL.Query().Get("status")
	if !orderStatuses[st] {
		observe.WriteProblem(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_status",
			Title: "invalid status", Detail: "status is pending, filled, rejected, cancelled or expired"})
		return
	}
	ctx, cancel := ledgerCtx(r.Context())
	defer cancel()
	res, err := s.ledger.ListOrders(ctx, &ledgerv1.ListOrdersRequest{AccountId: r.PathValue("id"), Status: st, From: from, PageSize: size})
	if err != nil {
		s.ledgerProblem(w, err, "account_not_found")
		return
	}
	out := OrderPage{Orders: make([]OrderView, 0, len(res.GetOrders())), Next: nextURL(r, res.GetNextFrom(), size)}
	for _, o := range res.GetOrders() {
		out.Orders = append(out.Orders, orderView(o))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) listTrades(w http.ResponseWriter, r *http.Request, _ principal) {
	from, size, ok := page(w, r)
	if !ok {
		return
	}
	ctx, cancel := ledgerCtx(r.Context())
	defer cancel()
	res, err := s.ledger.ListTrades(ctx, &ledgerv1.ListTradesRequest{AccountId: r.PathValue("id"), From: from, PageSize: size})
	if err != nil {
		s.ledgerProblem(w, err, "account_not_found")
		return
	}
	out := TradePage{Trades: make([]ExecutionView, 0, len(res.GetTrades())), Next: nextURL(r, res.GetNextFrom(), size)}
	for _, x := range res.GetTrades() {
		out.Trades = append(out.Trades, *executionView(x))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) listPositions(w http.ResponseWriter, r *http.Request, _ principal) {
	ctx, cancel := ledgerCtx(r.Context())
	defer cancel()
	res, err := s.ledger.ListPositions(ctx, &ledgerv1.ListPositionsRequest{AccountId: r.PathValue("id")})
	if err != nil {
		s.ledgerProblem(w, err, "account_not_found")
		return
	}
	out := PositionList{Positions: make([]PositionView, 0, len(res.GetPositions()))}
	for _, p := range res.GetPositions() {
		out.Positions = append(out.Positions, positionView(p))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) listTransactions(w http.ResponseWriter, r *http.Request, _ principal) {
	from, size, ok := page(w, r)
	if !ok {
		return
	}
	ctx, cancel := ledgerCtx(r.Context())
	defer cancel()
	res, err := s.ledger.ListTransactions(ctx, &ledgerv1.ListTransactionsRequest{AccountId: r.PathValue("id"), From: from, PageSize: size})
	if err != nil {
		s.ledgerProblem(w, err, "account_not_found")
		return
	}
	out := TransactionPage{Transactions: make([]TransactionView, 0, len(res.GetTransactions())),
		LastTransactionID: i64(res.GetLastTransactionId()), Next: nextURL(r, res.GetNextFrom(), size)}
	for _, t := range res.GetTransactions() {
		out.Transactions = append(out.Transactions, transactionView(t))
	}
	writeJSON(w, http.StatusOK, out)
}

func i64(n int64) string { return strconv.FormatInt(n, 10) }
