package feeder

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// PostgreSQL leader election. The lock is a session advisory lock on a dedicated connection whose
// server-side idle_session_timeout makes it a lease: a holder that stops talking — killed, frozen by
// SIGSTOP, cut off — loses its session, and so the lock, pgIdleSessionTimeoutMs after its last query.
// The holder proves the lock every pgProofIntervalMs and may publish only until pgProofValidityMs after
// the start of its last successful proof, which is always before the server can free the lock.
const (
	pgIdleSessionTimeoutMs    = 2000
	pgProofValidityMs         = 1000
	pgProofIntervalMs         = 200
	pgProofTimeoutMs          = 400
	pgCampaignPollMs          = 200
	pgConnectTimeoutMs        = 5000
	pgReleaseTimeoutMs        = 1000
	pgRetryDelayMinMs         = 100
	pgRetryDelayMaxMs         = 5000
	pgApplicationNameBytesMax = 63
)

// advisoryLockKey is the feeder's advisory lock, "kwsfeedr" in ASCII; it differs from goose's.
const advisoryLockKey int64 = 0x6b77736665656472

const (
	tryLockSQL = `SELECT pg_try_advisory_lock($1)`
	// proofSQL checks that this very session holds the lock (a pooler in transaction mode would fail it).
	proofSQL = `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND pid = pg_backend_pid() AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1)`
	bumpEpochSQL = `UPDATE feeder.epoch SET value = value + 1, holder = $1, started_at = now()
		WHERE id RETURNING value`
)

func init() {
	if pgProofValidityMs+pgProofTimeoutMs >= pgIdleSessionTimeoutMs {
		panic("feeder: postgres lease validity must end before the server frees the lock")
	}
}

// PGElector elects the leader with a PostgreSQL advisory lock (off-cluster: local mode and tests).
// Each term's epoch comes from feeder.epoch, raised while holding the lock.
type PGElector struct {
	url      string
	identity string
	log      *zap.Logger
}

// NewPGElector returns an elector on the database at url; identity names this replica.
func NewPGElector(url, identity string, log *zap.Logger) *PGElector {
	if log == nil {
		log = zap.NewNop()
	}
	return &PGElector{url: url, identity: identity, log: log.Named("election")}
}

// Campaign polls the lock until it is won, reconnecting with capped backoff on errors.
func (e *PGElector) Campaign(ctx context.Context) (*Lease, error) {
	delay := newBackoff(pgRetryDelayMinMs, pgRetryDelayMaxMs)
	for {
		lease, err := e.campaignOnce(ctx)
		if lease != nil {
			return lease, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		e.log.Warn("leader election: postgres unavailable, retrying", zap.Error(err))
		if !sleepCtx(ctx, delay.next()) {
			return nil, ctx.Err()
		}
	}
}

func (e *PGElector) campaignOnce(ctx context.Context) (*Lease, error) {
	conn, err := e.connect(ctx)
	if err != nil {
		return nil, err
	}
	for {
		start := time.Now()
		var won bool
		if err := conn.QueryRow(ctx, tryLockSQL, advisoryLockKey).Scan(&won); err != nil {
			closeConn(conn)
			return nil, fmt.Errorf("try advisory lock: %w", err)
		}
		if won {
			lease, err := e.begin(ctx, conn, start)
			if err != nil {
				closeConn(conn)
				return nil, err
			}
			return lease, nil
		}
		if !sleepCtx(ctx, pgCampaignPollMs*time.Millisecond) {
			closeConn(conn)
			return nil, ctx.Err()
		}
	}
}

func (e *PGElector) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(e.url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	name := "kawase-feeder/" + e.identity
	cfg.RuntimeParams["application_name"] = name[:min(len(name), pgApplicationNameBytesMax)]
	cfg.RuntimeParams["idle_session_timeout"] = strconv.Itoa(pgIdleSessionTimeoutMs)
	cfg.RuntimeParams["statement_timeout"] = strconv.Itoa(pgProofTimeoutMs)
	ctx, cancel := context.WithTimeout(ctx, pgConnectTimeoutMs*time.Millisecond)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect for leader election (needs PostgreSQL 14+ for idle_session_timeout): %w", err)
	}
	return conn, nil
}

// begin raises the epoch under the freshly won lock and starts proving it.
func (e *PGElector) begin(ctx context.Context, conn *pgx.Conn, wonAt time.Time) (*Lease, error) {
	var epoch int64
	if err := conn.QueryRow(ctx, bumpEpochSQL, e.identity).Scan(&epoch); err != nil {
		return nil, fmt.Errorf("raise epoch (is the feeder schema migrated?): %w", err)
	}
	k := &pgKeeper{conn: conn, log: e.log, resignReq: make(chan struct{}), exited: make(chan struct{})}
	k.lease = newLease(k.resign)
	k.lease.epoch.Store(epoch)
	k.lease.prove(wonAt, pgProofValidityMs*time.Millisecond)
	go k.run()
	return k.lease, nil
}

// pgKeeper owns the lock connection of one term.
type pgKeeper struct {
	conn      *pgx.Conn
	lease     *Lease
	log       *zap.Logger
	resignReq chan struct{}
	resignOne sync.Once
	exited    chan struct{}
}

func (k *pgKeeper) run() {
	defer close(k.exited)
	defer closeConn(k.conn)
	tick := time.NewTicker(pgProofIntervalMs * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-k.resignReq:
			return
		case <-tick.C:
		}
		start := time.Now()
		if err := k.proveOnce(); err != nil {
			k.lease.end(fmt.Errorf("%w: postgres advisory lock: %w", ErrLeaseLost, err))
			return
		}
		k.lease.prove(start, pgProofValidityMs*time.Millisecond)
	}
}

func (k *pgKeeper) proveOnce() error {
	ctx, cancel := context.WithTimeout(context.Background(), pgProofTimeoutMs*time.Millisecond)
	defer cancel()
	var held bool
	if err := k.conn.QueryRow(ctx, proofSQL, advisoryLockKey).Scan(&held); err != nil {
		return err
	}
	if !held {
		return errors.New("this session no longer holds the lock")
	}
	return nil
}

// resign closes the lock connection, which frees the lock at once, and waits for the keeper.
func (k *pgKeeper) resign() {
	k.resignOne.Do(func() { close(k.resignReq) })
	<-k.exited
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), pgReleaseTimeoutMs*time.Millisecond)
	defer cancel()
	_ = c.Close(ctx)
}
