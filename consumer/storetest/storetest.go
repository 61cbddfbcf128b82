// Package storetest gives tests a fresh, empty database of each backend the
// store supports, so one test suite runs over both.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/purchase-system/purchase-system/testkit/realdeps"
)

// PostgresEnv names the server tests create their databases on, for example
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable. `make test`
// starts one and sets it.
const PostgresEnv = "TEST_POSTGRES_URL"

// Backend is one database a test can use.
type Backend struct {
	Name string
	URL  string // a DATABASE_URL
}

// Backends returns an empty SQLite file and, when PostgreSQL is available,
// an empty PostgreSQL database; both are removed when the test ends.
func Backends(t testing.TB) []Backend {
	t.Helper()
	bs := []Backend{SQLite(t)}
	if u := PostgresURL(t); u != "" {
		bs = append(bs, Backend{"postgres", u})
	}
	return bs
}

// SQLite returns a DATABASE_URL for a new SQLite file in the test's temp dir.
func SQLite(t testing.TB) Backend {
	return Backend{"sqlite", "sqlite://" + filepath.Join(t.TempDir(), "purchases.db")}
}

// PostgresURL creates a fresh database on the server named by
// TEST_POSTGRES_URL and returns its URL. Without that server it returns ""
// and logs why — or fails when real dependencies are required (make test),
// so the PostgreSQL half of the suite cannot vanish unseen.
func PostgresURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresEnv)
	if base == "" {
		if realdeps.Required() {
			t.Fatalf("%s is not set: %s is set, so the PostgreSQL tests must run", PostgresEnv, realdeps.Env)
		}
		t.Logf("PostgreSQL backend not tested: %s is not set (make test starts a server and sets it)", PostgresEnv)
		return ""
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "test_" + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database on %s: %v", base, err)
	}
	t.Cleanup(func() {
		a, err := sql.Open("pgx", base)
		if err != nil {
			return
		}
		defer a.Close()
		_, _ = a.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}
