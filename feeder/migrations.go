package feeder

import (
	"context"
	"embed"
	"io/fs"

	"github.com/kawase-fx/kawase/eventing/pgdb"
)

// Schema is the PostgreSQL schema the feeder owns.
const Schema = "feeder"

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations returns the feeder's goose migrations, files at the root.
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic("feeder: embedded migrations missing: " + err.Error())
	}
	return sub
}

// Migrate brings the feeder schema of the database at url up to date.
func Migrate(ctx context.Context, url string) error {
	return pgdb.Migrate(ctx, url, Schema, Migrations())
}
