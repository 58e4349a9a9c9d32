package trading

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Token format and limits.
const (
	tokenPrefix      = "kawase_"
	tokenBytes       = 32
	tokenLengthMax   = 128
	keyCacheCountMax = 100_000
	bucketIdleMs     = 10 * 60 * 1000
	bucketCountMax   = 100_000
)

// principal is who a request acts for: the admin, or one account.
type principal struct {
	admin     bool
	accountID string
	// id names the principal in idempotency records and the rate limiter.
	id string
}

// errUnauthenticated and errBadToken are the two ways a request fails authentication.
var (
	errUnauthenticated = errors.New("no bearer token")
	errBadToken        = errors.New("unknown bearer token")
)

// newToken returns a fresh API token and its hash; only the hash is stored.
func newToken() (string, []byte) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return tok, hashToken(tok)
}

func hashToken(tok string) []byte {
	h := sha256.Sum256([]byte(tok))
	return h[:]
}

// authenticate resolves the bearer token of r.
func (s *Service) authenticate(ctx context.Context, r *http.Request) (principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return principal{}, errUnauthenticated
	}
	scheme, tok, ok := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" || len(tok) > tokenLengthMax {
		return principal{}, errBadToken
	}
	if s.cfg.AdminToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.AdminToken)) == 1 {
		return principal{admin: true, id: "admin"}, nil
	}
	hash := hashToken(tok)
	acct, ok := s.keys.cached(hash)
	if !ok {
		// A token this replica has not seen costs a PostgreSQL read, and an unknown one is never
		// cached: every such look-up shares one budget, so guessing tokens cannot flood the database.
		if ok, wait := s.lookups.allow(uncachedLookups, time.Now()); !ok {
			return principal{}, &lookupsLimitedError{wait: wait}
		}
		var err error
		if acct, err = s.keys.lookup(ctx, s.pool, hash); err != nil {
			return principal{}, err
		}
	}
	return principal{accountID: acct, id: "acct:" + acct}, nil
}

// uncachedLookups is the one bucket of the look-ups limiter. Its budget is uncachedLookupsFactor
// times one token's: a known token is read once per replica and then cached (up to keyCacheCountMax),
// so legitimate look-ups are rare, while an unknown token is read every time.
const (
	uncachedLookups       = "token look-ups"
	uncachedLookupsFactor = 10
)

// lookupsLimitedError says the budget of uncached token look-ups is spent for now.
type lookupsLimitedError struct{ wait time.Duration }

func (e *lookupsLimitedError) Error() string {
	return fmt.Sprintf("token look-ups limited; retry in %v", e.wait)
}

// keyCache remembers token hashes that resolved to an account (tokens are never reassigned).
type keyCache struct {
	mu sync.RWMutex
	m  map[string]string
}

func newKeyCache() *keyCache { return &keyCache{m: make(map[string]string)} }

// cached returns the account of a token hash seen before.
func (c *keyCache) cached(hash []byte) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	acct, ok := c.m[hex.EncodeToString(hash)]
	return acct, ok
}

func (c *keyCache) lookup(ctx context.Context, pool *pgxpool.Pool, hash []byte) (string, error) {
	k := hex.EncodeToString(hash)
	if acct, ok := c.cached(hash); ok {
		return acct, nil
	}
	var acct string
	err := pool.QueryRow(ctx, `SELECT account_id FROM trading.api_keys WHERE token_hash = $1`, hash).Scan(&acct)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", errBadToken
	}
	if err != nil {
		return "", fmt.Errorf("look up token: %w", err)
	}
	c.mu.Lock()
	if len(c.m) < keyCacheCountMax {
		c.m[k] = acct
	}
	c.mu.Unlock()
	return acct, nil
}

// storeToken records the hash of an account's new token.
func storeToken(ctx context.Context, pool *pgxpool.Pool, hash []byte, accountID string) error {
	if _, err := pool.Exec(ctx, `INSERT INTO trading.api_keys (token_hash, account_id) VALUES ($1, $2)`, hash, accountID); err != nil {
		return fmt.Errorf("store token of %s: %w", accountID, err)
	}
	return nil
}

// tokenDropTimeoutMs bounds the clean-up of a token whose account was not opened.
const tokenDropTimeoutMs = 2_000

// dropToken deletes a token stored for an account the ledger did not open (refused, or failed), so no
// valid token is left that was never shown, for an account that may not exist or may be another's. A
// failure is returned for the caller to log: the token was never shown to anyone.
func dropToken(ctx context.Context, pool *pgxpool.Pool, hash []byte) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tokenDropTimeoutMs*time.Millisecond)
	defer cancel()
	if _, err := pool.Exec(ctx, `DELETE FROM trading.api_keys WHERE token_hash = $1`, hash); err != nil {
		return fmt.Errorf("drop an unused token: %w", err)
	}
	return nil
}

// limiter is a token bucket per principal: rate tokens a second, at most burst at once.
type limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: make(map[string]*bucket)}
}

// allow takes one token of id's bucket at now; when there is none it says how long until there is.
func (l *limiter) allow(id string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b, ok := l.buckets[id]
	if !ok {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[id] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// sweep forgets buckets idle long enough to be full again, so the map stays bounded.
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < bucketIdleMs*time.Millisecond && len(l.buckets) < bucketCountMax {
		return
	}
	l.swept = now
	for id, b := range l.buckets {
		if now.Sub(b.at) >= bucketIdleMs*time.Millisecond {
			delete(l.buckets, id)
		}
	}
}

// retryAfter renders a wait as whole seconds for the Retry-After header (at least 1).
func retryAfter(wait time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(wait.Seconds()))))
}
