// Package pgtest gives tests a real PostgreSQL: a fresh, empty database per test on a private cluster
// started once per test binary (or on the server DATABASE_URL names, when it is set).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kawase-fx/kawase/eventing/pgdb"
)

const setupTimeoutSec = 120

var (
	mu         sync.Mutex
	mainCalled bool
	local      *pgdb.Local
	localDir   string
)

// Main runs a package's tests and stops the private cluster afterwards. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	mu.Lock()
	mainCalled = true
	mu.Unlock()
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if local != nil {
		if err := local.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
		os.RemoveAll(localDir)
	}
	return code
}

// URL returns the connection string of a new, empty database that no other test uses.
func URL(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeoutSec*time.Second)
	defer cancel()
	name := "t_" + randomSuffix(t)
	if base := os.Getenv("DATABASE_URL"); base != "" {
		return createOn(ctx, t, base, name)
	}
	l := cluster(ctx, t)
	if err := l.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return l.DatabaseURL(name)
}

func cluster(ctx context.Context, t testing.TB) *pgdb.Local {
	mu.Lock()
	defer mu.Unlock()
	if !mainCalled {
		t.Fatal("pgtest: the package needs func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }")
	}
	if local != nil {
		return local
	}
	dir, err := os.MkdirTemp("", "kawase-pgtest-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	l, err := pgdb.StartLocal(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("pgtest: %v", err)
	}
	local, localDir = l, dir
	return l
}

func createOn(ctx context.Context, t testing.TB, base, name string) string {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: connect to DATABASE_URL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("pgtest: DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

func randomSuffix(t testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return hex.EncodeToString(b)
}

// Pool returns a pool on a fresh database (URL) that migrate, a service's Migrate, has migrated; the
// pool is closed when the test ends.
func Pool(t testing.TB, migrate func(ctx context.Context, url string) error) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeoutSec*time.Second)
	defer cancel()
	url := URL(t)
	if err := migrate(ctx, url); err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
