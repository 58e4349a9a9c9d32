package trading

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
)

// Limits of idempotency keys.
const (
	idempotencyKeyLengthMax = 200
	idempotencySweepMs      = 10 * 60 * 1000
	claimAttemptsMax        = 3
)

// Outcomes of claiming an idempotency key.
var (
	// errKeyReused marks a key used before with a different request: 422.
	errKeyReused = errors.New("idempotency key reused with a different request")
	// errKeyInFlight marks a key whose first request is still being processed: 409.
	errKeyInFlight = errors.New("idempotency key in flight")
)

// response is an HTTP answer as trading stores and replays it.
type response struct {
	status      int
	contentType string
	location    string
	body        []byte
}

func (r response) write(w http.ResponseWriter) {
	if r.location != "" {
		w.Header().Set("Location", r.location)
	}
	if r.contentType != "" {
		w.Header().Set("Content-Type", r.contentType)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// claim is a held idempotency key.
type claim struct {
	principal, key string
	// lease is the lease_until this claim wrote: a holder whose key was taken over (its lease lapsed
	// while it still ran) no longer matches, so it cannot settle or release its successor's claim.
	lease time.Time
}

// requestHash identifies a request for idempotency: what it does and to what.
func requestHash(method, target string, body []byte) []byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", method, target)
	h.Write(body)
	return h.Sum(nil)
}

// claimKey takes key for principal: it returns the stored first response when the same request was
// answered before, errKeyReused or errKeyInFlight, or a claim the caller must settle.
func (s *Service) claimKey(ctx context.Context, principal, key string, hash []byte) (*claim, *response, error) {
	for range claimAttemptsMax {
		c, r, err := s.claimKeyOnce(ctx, principal, key, hash)
		if !errors.Is(err, errKeyReleased) {
			return c, r, err
		}
	}
	return nil, nil, errKeyInFlight
}

// errKeyReleased marks a key released between the insert and the read: claim again.
var errKeyReleased = errors.New("idempotency key released meanwhile")

func (s *Service) claimKeyOnce(ctx context.Context, principal, key string, hash []byte) (*claim, *response, error) {
	now := time.Now()
	lease := now.Add(s.cfg.IdempotencyLease).Truncate(time.Microsecond) // as PostgreSQL keeps it
	tag, err := s.pool.Exec(ctx, `INSERT INTO trading.idempotency (principal, key, request_hash, state, lease_until)
		VALUES ($1, $2, $3, 'in_flight', $4) ON CONFLICT (principal, key) DO NOTHING`, principal, key, hash, lease)
	if err != nil {
		return nil, nil, fmt.Errorf("claim idempotency key: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return &claim{principal: principal, key: key, lease: lease}, nil, nil
	}
	var stored []byte
	var state string
	var until time.Time
	var r response
	var status *int
	var location, contentType *string
	err = s.pool.QueryRow(ctx, `SELECT request_hash, state, lease_until, status, location, content_type, body
		FROM trading.idempotency WHERE principal = $1 AND key = $2`, principal, key).
		Scan(&stored, &state, &until, &status, &location, &contentType, &r.body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, errKeyReleased
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read idempotency key: %w", err)
	}
	if string(stored) != string(hash) {
		return nil, nil, errKeyReused
	}
	if state == "done" {
		r.status = *status
		if location != nil {
			r.location = *location
		}
		if contentType != nil {
			r.contentType = *contentType
		}
		return nil, &r, nil
	}
	if now.Before(until) {
		return nil, nil, errKeyInFlight
	}
	// The replica that held the key died: take it over (the order id comes from the key, so the
	// ledger's inbox turns a second placement into the first one).
	tag, err = s.pool.Exec(ctx, `UPDATE trading.idempotency SET lease_until = $3
		WHERE principal = $1 AND key = $2 AND state = 'in_flight' AND lease_until < $4`, principal, key, lease, now)
	if err != nil {
		return nil, nil, fmt.Errorf("take over idempotency key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return nil, nil, errKeyInFlight
	}
	return &claim{principal: principal, key: key, lease: lease}, nil, nil
}

// settle stores the response of a claimed key; a server-side failure (5xx) releases the key instead,
// so the client's retry runs again.
func (s *Service) settle(ctx context.Context, c *claim, r response) error {
	ctx = context.WithoutCancel(ctx)
	// Only while the claim is still this one: a successor that took the key over settles it itself.
	if r.status >= http.StatusInternalServerError {
		if _, err := s.pool.Exec(ctx, `DELETE FROM trading.idempotency WHERE principal = $1 AND key = $2
			AND state = 'in_flight' AND lease_until = $3`, c.principal, c.key, c.lease); err != nil {
			return fmt.Errorf("release idempotency key: %w", err)
		}
		return nil
	}
	if _, err := s.pool.Exec(ctx, `UPDATE trading.idempotency SET state = 'done', status = $3, location = $4,
		content_type = $5, body = $6 WHERE principal = $1 AND key = $2 AND state = 'in_flight' AND lease_until = $7`,
		c.principal, c.key, r.status, r.location, r.contentType, r.body, c.lease); err != nil {
		return fmt.Errorf("settle idempotency key: %w", err)
	}
	return nil
}

// expireIdempotency deletes finished idempotency records and submitted-order records older than
// IdempotencyKeep, periodically.
func (s *Service) expireIdempotency(ctx context.Context) error {
	t := time.NewTicker(idempotencySweepMs * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := s.pool.Exec(ctx, `DELETE FROM trading.idempotency WHERE state = 'done' AND created_at < $1`,
			time.Now().Add(-s.cfg.IdempotencyKeep)); err != nil && ctx.Err() == nil {
			s.log.Warnw("expiring idempotency records failed; will retry", "error", err)
		}
		if err := s.expireSubmitted(ctx); err != nil && ctx.Err() == nil {
			s.log.Warnw("expiring submitted-order records failed; will retry", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
