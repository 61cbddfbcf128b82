package clustertest

import (
	"context"
	"database/sql"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// TestPodsGetNoMoreFromHostServicesThanTheyNeed: the host's PostgreSQL and
// Prometheus are reachable from the pod network, so they must not hand
// it more than the system needs. Connections from 10.88.0.1 come from the
// pod network as far as PostgreSQL's pg_hba is concerned, exactly as a
// pod's would.
func TestPodsGetNoMoreFromHostServicesThanTheyNeed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(url string) *sql.DB {
		db, err := sql.Open("pgx", url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}

	// The superuser, without a password, from the pod network: refused.
	if err := open("postgres://postgres@10.88.0.1:5432/purchases?sslmode=disable").PingContext(ctx); err == nil {
		t.Error("the PostgreSQL superuser connected from the pod network without a password")
	} else if !strings.Contains(err.Error(), "pg_hba.conf") {
		t.Errorf("superuser from the pod network: %v, want a pg_hba refusal", err)
	}
	// The application role, with its password: in, but not a superuser.
	pw, err := os.ReadFile(filepath.Join(repoRoot, ".cache", "infra", "postgres", "app-password"))
	if err != nil {
		t.Fatal(err)
	}
	app := open("postgres://purchases:" + strings.TrimSpace(string(pw)) + "@10.88.0.1:5432/purchases?sslmode=disable")
	if err := app.PingContext(ctx); err != nil {
		t.Fatalf("the purchases role from the pod network: %v", err)
	}
	if _, err := app.ExecContext(ctx, "COPY (SELECT 1) TO PROGRAM 'true'"); err == nil || !strings.Contains(err.Error(), "42501") {
		t.Errorf("COPY ... TO PROGRAM as the purchases role: %v, want insufficient privilege (SQLSTATE 42501)", err)
	}
	if err := open("postgres://purchases:wrong@10.88.0.1:5432/purchases?sslmode=disable").PingContext(ctx); err == nil {
		t.Error("the purchases role connected with a wrong password")
	}

	// Prometheus' lifecycle API is off: nobody on the pod network stops it.
	resp, err := http.Post(prometheusURL+"/-/quit", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("POST /-/quit answered 200: the lifecycle API is on")
	}
	ready, err := http.Get(prometheusURL + "/-/ready")
	if err != nil {
		t.Fatalf("Prometheus after POST /-/quit: %v", err)
	}
	ready.Body.Close()
}
