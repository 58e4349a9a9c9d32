package pgdb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/kawase-fx/kawase/eventing/pgdb"
	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestMigrateOwnsSchemaAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	fsys := fstest.MapFS{
		"00001_init.sql": {Data: []byte("-- +goose Up\nCREATE TABLE alpha.thing (id bigint PRIMARY KEY, price numeric NOT NULL);\n")},
	}
	for range 2 {
		if err := pgdb.Migrate(ctx, url, "alpha", fsys); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	other := fstest.MapFS{
		"00001_init.sql": {Data: []byte("-- +goose Up\nCREATE TABLE beta.thing (id bigint PRIMARY KEY);\n")},
	}
	if err := pgdb.Migrate(ctx, url, "beta", other); err != nil {
		t.Fatalf("migrate beta: %v", err)
	}
	pool, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var versions int
	for _, schema := range []string{"alpha", "beta"} {
		if err := pool.QueryRow(ctx, "SELECT max(version_id) FROM "+schema+".goose_db_version").Scan(&versions); err != nil {
			t.Fatalf("%s version table: %v", schema, err)
		}
		if versions != 1 {
			t.Errorf("%s at version %d, want 1", schema, versions)
		}
	}
	var sync string
	if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&sync); err != nil || sync != "on" {
		t.Errorf("synchronous_commit = %q (%v), want on", sync, err)
	}
	if err := pgdb.Migrate(ctx, url, "Bad-Name", fsys); err == nil {
		t.Error("bad schema name accepted")
	}
}

// TestMigrateRefusesNewerSchema: a binary that knows fewer migrations than the database has (a
// rollback without the newer migrations' Down) refuses to start.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	first := &fstest.MapFile{Data: []byte("-- +goose Up\nCREATE TABLE gamma.thing (id bigint PRIMARY KEY);\n")}
	second := &fstest.MapFile{Data: []byte("-- +goose Up\nALTER TABLE gamma.thing ADD COLUMN n int;\n")}
	if err := pgdb.Migrate(ctx, url, "gamma", fstest.MapFS{"00001_init.sql": first, "00002_n.sql": second}); err != nil {
		t.Fatal(err)
	}
	err := pgdb.Migrate(ctx, url, "gamma", fstest.MapFS{"00001_init.sql": first})
	if !errors.Is(err, pgdb.ErrSchemaNewer) {
		t.Fatalf("older binary: %v, want ErrSchemaNewer", err)
	}
	if err := pgdb.Migrate(ctx, url, "gamma", fstest.MapFS{"00001_init.sql": first, "00002_n.sql": second}); err != nil {
		t.Fatalf("same binary again: %v", err)
	}
}

func TestStartLocalReusesCluster(t *testing.T) {
	if os.Getenv("DATABASE_URL") != "" {
		t.Skip("DATABASE_URL is set: the local cluster is not used")
	}
	ctx := context.Background()
	dir := t.TempDir()
	l, err := pgdb.StartLocal(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgdb.Open(ctx, l.URL())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE kept (v numeric); INSERT INTO kept VALUES (1.50)"); err != nil {
		t.Fatal(err)
	}
	pool.Close()
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	l2, err := pgdb.StartLocal(ctx, dir)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer l2.Stop()
	pool2, err := pgdb.Open(ctx, l2.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer pool2.Close()
	var v string
	if err := pool2.QueryRow(ctx, "SELECT v::text FROM kept").Scan(&v); err != nil || v != "1.50" {
		t.Fatalf("data after restart = %q, %v", v, err)
	}
}

// TestMigrateFromReplicasStartingTogether: replicas that start at once all migrate the same new
// schema; none fails on the race to create it.
func TestMigrateFromReplicasStartingTogether(t *testing.T) {
	const replicas, rounds = 8, 5
	url := pgtest.URL(t)
	fsys := fstest.MapFS{
		"00001_init.sql": {Data: []byte("-- +goose Up\nCREATE TABLE {{S}}.thing (id bigint PRIMARY KEY);\n")},
	}
	for round := range rounds {
		schema := fmt.Sprintf("together_%d", round)
		files := fstest.MapFS{"00001_init.sql": {Data: bytes.ReplaceAll(fsys["00001_init.sql"].Data, []byte("{{S}}"), []byte(schema))}}
		errs := make(chan error, replicas)
		var wg sync.WaitGroup
		for range replicas {
			wg.Go(func() { errs <- pgdb.Migrate(context.Background(), url, schema, files) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}
