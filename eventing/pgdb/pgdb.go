// Package pgdb is kawase's access to PostgreSQL, the system of record: connection pools, schema
// migrations (each service owns one schema and migrates it with goose from SQL files embedded in its
// binary), and a private local cluster for dev mode and tests.
package pgdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// SQLSTATEs a concurrent CREATE SCHEMA IF NOT EXISTS can fail with.
const (
	sqlstateUniqueViolation = "23505"
	sqlstateDuplicateSchema = "42P06"
)

// Limits of connecting.
const (
	connectTimeoutMs = 10_000
	poolConnsMax     = 16
)

var schemaName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// Open connects a pool to url and checks that the server answers.
func Open(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if cfg.MaxConns < poolConnsMax {
		cfg.MaxConns = poolConnsMax
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeoutMs*time.Millisecond)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", err)
	}
	return pool, nil
}

// Migrate brings schema up to date with the goose SQL migrations in fsys (files like
// 00001_init.sql at its root). The schema is created if missing and holds its own version table, so
// services never share migration history; a session advisory lock serializes replicas that start
// together.
func Migrate(ctx context.Context, url, schema string, fsys fs.FS) error {
	if !schemaName.MatchString(schema) {
		return fmt.Errorf("migrate: bad schema name %q", schema)
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("migrate %s: parse database url: %w", schema, err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil && !createdConcurrently(err) {
		return fmt.Errorf("migrate %s: create schema: %w", schema, err)
	}
	return runMigrations(ctx, db, schema, fsys)
}

func runMigrations(ctx context.Context, db *sql.DB, schema string, fsys fs.FS) error {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migrate %s: locker: %w", schema, err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithTableName(schema+".goose_db_version"),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrate %s: %w", schema, err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate %s: %w", schema, err)
	}
	return checkNotNewer(ctx, db, p, schema)
}

// ErrSchemaNewer: the database's schema has migrations this binary does not know, so a newer binary
// migrated it and this one would write it as the older schema did (a rollback without the newer
// migrations' Down). Permanent until an operator runs those Downs.
var ErrSchemaNewer = errors.New("database schema is newer than this binary")

// checkNotNewer refuses a database whose version is past the newest migration p knows. It reads the
// version table itself: the provider's own read would queue for the migration lock again.
func checkNotNewer(ctx context.Context, conn *sql.DB, p *goose.Provider, schema string) error {
	var db int64
	if err := conn.QueryRowContext(ctx, "SELECT coalesce(max(version_id), 0) FROM "+schema+".goose_db_version").Scan(&db); err != nil {
		return fmt.Errorf("migrate %s: read version: %w", schema, err)
	}
	var known int64
	for _, s := range p.ListSources() {
		known = max(known, s.Version)
	}
	if db > known {
		return fmt.Errorf("migrate %s: %w: at version %d, this binary knows up to %d; run the Down of migrations %d..%d first",
			schema, ErrSchemaNewer, db, known, known+1, db)
	}
	return nil
}

// createdConcurrently says whether CREATE SCHEMA IF NOT EXISTS failed only because another replica
// created the schema at the same moment (PostgreSQL checks existence before it inserts, so two racing
// sessions can both pass the check; the loser gets a unique violation or duplicate_schema).
func createdConcurrently(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == sqlstateUniqueViolation || pgErr.Code == sqlstateDuplicateSchema)
}
