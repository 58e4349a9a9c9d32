package main

import (
	"os"
	"testing"

	"github.com/kawase-fx/kawase/eventing/pgdb/pgtest"
)

// TestMain gives this package's tests a private PostgreSQL (pgtest.URL) and stops it afterwards.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
