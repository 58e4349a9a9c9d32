package trading

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestLimiterRefillsAndSaysWhen(t *testing.T) {
	l := newLimiter(10, 3)
	now := time.Unix(1_700_000_000, 0)
	for i := range 3 {
		if ok, _ := l.allow("a", now); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, wait := l.allow("a", now)
	if ok || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("4th request: ok=%v wait=%v, want refused for at most 100ms", ok, wait)
	}
	if ok, _ := l.allow("b", now); !ok {
		t.Fatal("another principal was limited")
	}
	if ok, _ := l.allow("a", now.Add(100*time.Millisecond)); !ok {
		t.Fatal("no refill after 100ms at 10/s")
	}
	if got := retryAfter(30 * time.Millisecond); got != "1" {
		t.Errorf("Retry-After = %s, want at least 1", got)
	}
}

func TestOrderSpecDefaultsAndLimits(t *testing.T) {
	spec, err := OrderRequest{Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1000)}.orderSpec()
	if err != nil || spec.Type != eventing.OrderTypeMarket || spec.TimeInForce != eventing.TimeInForceFOK {
		t.Fatalf("market defaults: %+v %v", spec, err)
	}
	p := decimal.RequireFromString("150.000")
	goodTill := time.Now().Add(time.Hour)
	spec, err = OrderRequest{Pair: "USD_JPY", Side: "sell", Units: decimal.NewFromInt(1), Type: "limit", Price: &p}.orderSpec()
	if err != nil || spec.TimeInForce != eventing.TimeInForceGTC {
		t.Fatalf("limit defaults: %+v %v", spec, err)
	}
	for name, req := range map[string]OrderRequest{
		"too many units":   {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(unitsMax + 1)},
		"bad client id":    {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1), ClientOrderID: "has space"},
		"@ client id":      {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1), ClientOrderID: "@x"},
		"price on market":  {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1), Price: &p},
		"unknown pair":     {Pair: "ABC_DEF", Side: "buy", Units: decimal.NewFromInt(1)},
		"fractional units": {Pair: "USD_JPY", Side: "buy", Units: decimal.RequireFromString("0.5")},
		"huge exponent":    {Pair: "USD_JPY", Side: "buy", Units: decimal.RequireFromString("1e2000000000")},
		"bound on a stop":  {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1), Type: "stop", Price: &p, PriceBound: &p},
		"bound on a limit": {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1), Type: "limit", Price: &p, PriceBound: &p},
		"goodTill, market": {Pair: "USD_JPY", Side: "buy", Units: decimal.NewFromInt(1), GoodTill: &goodTill},
	} {
		if _, err := req.orderSpec(); !errors.Is(err, eventing.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestDerivedIDsFollowTheIdempotencyKey(t *testing.T) {
	a, b := derivedID("o_", 12, "k1", "acct-1"), derivedID("o_", 12, "k1", "acct-1")
	if a != b || len(a) != 2+24 {
		t.Fatalf("same key, different ids: %s %s", a, b)
	}
	if derivedID("o_", 12, "k1", "acct-2") == a || derivedID("o_", 12, "k2", "acct-1") == a {
		t.Fatal("another account or key gave the same id")
	}
	if derivedID("o_", 12, "", "acct-1") == derivedID("o_", 12, "", "acct-1") {
		t.Fatal("ids without a key repeat")
	}
}

func TestAuthorizeRules(t *testing.T) {
	admin, a := principal{admin: true, id: "admin"}, principal{accountID: "A", id: "acct:A"}
	cases := []struct {
		p      principal
		access access
		acct   string
		status int
		code   string
	}{
		{admin, adminOnly, "", http.StatusOK, ""},
		{a, adminOnly, "", http.StatusForbidden, "admin_only"},
		{admin, readAccount, "A", http.StatusOK, ""},
		{a, readAccount, "A", http.StatusOK, ""},
		{a, readAccount, "B", http.StatusNotFound, "account_not_found"},
		{admin, tradeAccount, "A", http.StatusForbidden, "admin_cannot_trade"},
		{a, tradeAccount, "A", http.StatusOK, ""},
		{a, tradeAccount, "B", http.StatusNotFound, "account_not_found"},
	}
	for _, c := range cases {
		w := httptest.NewRecorder()
		ok := authorize(w, c.p, c.access, c.acct)
		if ok != (c.status == http.StatusOK) || (!ok && (w.Code != c.status || !strings.Contains(w.Body.String(), c.code))) {
			t.Errorf("%+v on %d/%s: ok=%v %d %s", c.p, c.access, c.acct, ok, w.Code, w.Body)
		}
	}
}

func TestLedgerErrorsMapToStatuses(t *testing.T) {
	s := &Service{log: zap.NewNop().Sugar()}
	for code, want := range map[codes.Code]int{codes.NotFound: 404, codes.InvalidArgument: 400, codes.AlreadyExists: 409,
		codes.DeadlineExceeded: 504, codes.Unavailable: 503, codes.Internal: 503} {
		w := httptest.NewRecorder()
		s.ledgerProblem(w, status.Error(code, "x"), "thing_not_found")
		if w.Code != want || w.Header().Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s -> %d %s, want %d", code, w.Code, w.Header().Get("Content-Type"), want)
		}
	}
}

// idemService is a Service with only what the idempotency store needs, on a real database.
func idemService(t *testing.T) *Service {
	t.Helper()
	pool := pgtest.Pool(t, Migrate)
	cfg := DefaultConfig()
	cfg.IdempotencyLease = 200 * time.Millisecond
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &Service{cfg: cfg, pool: pool, log: zap.NewNop().Sugar(), m: m}
}

func TestIdempotencyStore(t *testing.T) {
	s := idemService(t)
	ctx := context.Background()
	h1, h2 := requestHash("POST", "/x", []byte("a")), requestHash("POST", "/x", []byte("b"))
	c, first, err := s.claimKey(ctx, "acct:A", "k", h1)
	if err != nil || c == nil || first != nil {
		t.Fatalf("first claim: %v %v %v", c, first, err)
	}
	if _, _, err := s.claimKey(ctx, "acct:A", "k", h1); !errors.Is(err, errKeyInFlight) {
		t.Fatalf("second claim in flight: %v", err)
	}
	if _, _, err := s.claimKey(ctx, "acct:A", "k", h2); !errors.Is(err, errKeyReused) {
		t.Fatalf("other body: %v", err)
	}
	if c2, _, err := s.claimKey(ctx, "acct:B", "k", h1); err != nil || c2 == nil {
		t.Fatalf("same key, other principal: %v", err)
	}
	// The holder dies: once the lease lapses a retry takes the key over.
	time.Sleep(250 * time.Millisecond)
	c, _, err = s.claimKey(ctx, "acct:A", "k", h1)
	if err != nil || c == nil {
		t.Fatalf("takeover: %v", err)
	}
	if err := s.settle(ctx, c, response{status: 201, contentType: "application/json", location: "/o/1", body: []byte(`{"id":"1"}`)}); err != nil {
		t.Fatal(err)
	}
	_, first, err = s.claimKey(ctx, "acct:A", "k", h1)
	if err != nil || first == nil || first.status != 201 || first.location != "/o/1" || string(first.body) != `{"id":"1"}` {
		t.Fatalf("replay: %+v %v", first, err)
	}
	// A holder whose lease lapsed and whose key was taken over can neither release nor settle it:
	// the successor's claim, and then its stored answer, stand.
	stale, _, _ := s.claimKey(ctx, "acct:A", "k7", h1)
	time.Sleep(250 * time.Millisecond)
	successor, _, err := s.claimKey(ctx, "acct:A", "k7", h1)
	if err != nil || successor == nil {
		t.Fatalf("takeover of k7: %v", err)
	}
	if err := s.settle(ctx, stale, response{status: 503}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.claimKey(ctx, "acct:A", "k7", h1); !errors.Is(err, errKeyInFlight) {
		t.Fatalf("after the stale holder's 503 the successor's claim must stand: %v", err)
	}
	if err := s.settle(ctx, successor, response{status: 201, contentType: "application/json", body: []byte(`{"id":"7"}`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.settle(ctx, stale, response{status: 201, contentType: "application/json", body: []byte(`{"id":"stale"}`)}); err != nil {
		t.Fatal(err)
	}
	if _, first, err := s.claimKey(ctx, "acct:A", "k7", h1); err != nil || first == nil || string(first.body) != `{"id":"7"}` {
		t.Fatalf("stored answer of k7: %+v %v", first, err)
	}
	// A server-side failure releases the key, so the retry runs again.
	c, _, _ = s.claimKey(ctx, "acct:A", "k5", h1)
	if err := s.settle(ctx, c, response{status: 503}); err != nil {
		t.Fatal(err)
	}
	if c, first, err := s.claimKey(ctx, "acct:A", "k5", h1); err != nil || c == nil || first != nil {
		t.Fatalf("after a 503: %v %v %v", c, first, err)
	}
}

// Unknown tokens are read from PostgreSQL every time, so they share one budget: once it is spent a
// caller gets a wait instead of a database read, while a token already cached still authenticates.
func TestUncachedTokenLookupsAreLimited(t *testing.T) {
	s := idemService(t)
	s.keys, s.lookups = newKeyCache(), newLimiter(1, 3)
	ctx := context.Background()
	tok, hash := newToken()
	if err := storeToken(ctx, s.pool, hash, "acc_known"); err != nil {
		t.Fatal(err)
	}
	bearer := func(tok string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/accounts/acc_known", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		return r
	}
	if p, err := s.authenticate(ctx, bearer(tok)); err != nil || p.accountID != "acc_known" {
		t.Fatalf("known token: %+v %v", p, err)
	}
	for i := range 2 { // the rest of the burst of 3
		guess, _ := newToken()
		if _, err := s.authenticate(ctx, bearer(guess)); !errors.Is(err, errBadToken) {
			t.Fatalf("guess %d: %v, want errBadToken", i, err)
		}
	}
	guess, _ := newToken()
	var limited *lookupsLimitedError
	if _, err := s.authenticate(ctx, bearer(guess)); !errors.As(err, &limited) || limited.wait <= 0 {
		t.Fatalf("guess past the budget: %v, want a wait", err)
	}
	if p, err := s.authenticate(ctx, bearer(tok)); err != nil || p.accountID != "acc_known" {
		t.Fatalf("cached token while look-ups are limited: %+v %v", p, err)
	}
	rec := httptest.NewRecorder()
	s.authProblem(rec, limited)
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("answer: %d %v", rec.Code, rec.Header())
	}
}

// TestResultReachesEveryWaiter: two requests waiting on one command id (two DELETEs of one order) both
// get its result, and one that stops waiting does not take the other's place.
func TestResultReachesEveryWaiter(t *testing.T) {
	tail := newResultTail(nil, zap.NewNop().Sugar())
	first, stopFirst := tail.wait("cancel:o1")
	second, stopSecond := tail.wait("cancel:o1")
	gone, stopGone := tail.wait("cancel:o1")
	stopGone()
	tail.deliver(eventing.OrderResultV1{CommandID: "cancel:o1", Status: eventing.ResultCancelled})
	for i, ch := range []<-chan eventing.OrderResultV1{first, second} {
		select {
		case r := <-ch:
			if r.Status != eventing.ResultCancelled {
				t.Fatalf("waiter %d got %+v", i, r)
			}
		default:
			t.Fatalf("waiter %d got no result", i)
		}
	}
	select {
	case r := <-gone:
		t.Fatalf("a waiter that stopped got %+v", r)
	default:
	}
	stopFirst()
	stopSecond()
	if len(tail.waiting) != 0 {
		t.Fatalf("waiters left behind: %v", tail.waiting)
	}
}

// TestEventKeyNamesTheEventUnambiguously: an order request event's key is its source and id, written
// out as before when it fits; a source too long for the key limit, or one with the separator in it,
// gets a hashed key that fits and that no other source and id share.
func TestEventKeyNamesTheEventUnambiguously(t *testing.T) {
	if got := eventKey("/producer", "e-1"); got != "ce:/producer|e-1" {
		t.Fatalf("short key = %q", got)
	}
	long := "/" + strings.Repeat("s", 250)
	if k := eventKey(long, "e-1"); len(k) > idempotencyKeyLengthMax || k == eventKey(long, "e-2") {
		t.Fatalf("long source: %q", k)
	}
	if eventKey("a|b", "c") == eventKey("a", "b|c") {
		t.Fatal("source a|b with id c and source a with id b|c share a key")
	}
}

// refusingLedger answers OpenAccount with code; nothing else is called.
type refusingLedger struct {
	ledgerv1.LedgerServiceClient
	code codes.Code
}

func (l refusingLedger) OpenAccount(context.Context, *ledgerv1.OpenAccountRequest, ...grpc.CallOption) (*ledgerv1.OpenAccountResponse, error) {
	return nil, status.Error(l.code, "refused by the test")
}

// TestUnopenedAccountLeavesNoToken: the token stored before the ledger opens the account is deleted
// when the ledger does not open it, so no valid token is left for an account that may not exist, or
// may be another's.
func TestUnopenedAccountLeavesNoToken(t *testing.T) {
	for _, code := range []codes.Code{codes.Unavailable, codes.AlreadyExists, codes.InvalidArgument} {
		s := idemService(t)
		s.ledger = refusingLedger{code: code}
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/accounts", nil)
		s.openAccount(w, r, principal{admin: true, id: "admin"}, []byte(`{"currency":"JPY","deposit":"1000"}`), "k1")
		var n int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM trading.api_keys`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if w.Code < 400 || n != 0 {
			t.Errorf("%s: answered %d, %d token(s) left", code, w.Code, n)
		}
	}
}
