package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// start runs the consumer with env on a free loopback port, the embedded
// SQLite store and a Kafka address nothing listens on, and returns its
// base URL.
func start(t *testing.T, env map[string]string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	kafka := dead.Addr().String()
	dead.Close()
	env["HTTP_ADDR"] = addr
	env["DATABASE_URL"] = "sqlite://" + filepath.Join(t.TempDir(), "purchases.db")
	env["KAFKA_BOOTSTRAP_SERVERS"] = kafka
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, func(k string) string { return env[k] }, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the consumer did not stop within 30 s of its context ending")
		}
	})
	return "http://" + addr
}

func status(t *testing.T, method, url, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

const claim = `{"key":"key-1","purchase":{"id":"0b5e7c1e-8d1c-4a5e-9c59-1f5d7a0b6e11","username":"u","userid":"u1","price":1,"timestamp":"2026-12-05T10:00:00Z"}}`

// ROLE=api answers reads and Idempotency-Keys with no Kafka at all: it is
// what keeps /buy with a key and GET /getAllUserBuys working while the
// consumers are scaled to zero.
func TestTheAPIRoleServesReadsAndKeysWithoutKafka(t *testing.T) {
	base := start(t, map[string]string{"ROLE": "api"})
	testproc.Eventually(t, 20*time.Second, "the API role ready with Kafka away", func() error {
		if s := status(t, http.MethodGet, base+"/readyz", ""); s != http.StatusOK {
			return &statusError{"/readyz", s}
		}
		return nil
	})
	if s := status(t, http.MethodPost, base+"/claims", claim); s != http.StatusOK {
		t.Errorf("POST /claims: %d, want 200", s)
	}
	if s := status(t, http.MethodGet, base+"/purchases/u1", ""); s != http.StatusOK {
		t.Errorf("GET /purchases/u1: %d, want 200", s)
	}
}

// ROLE=ingest serves health and metrics only: reads and keys are the API
// Deployment's, so a worker must not answer them from behind another
// Service.
func TestTheIngestRoleServesNoReadsOrKeys(t *testing.T) {
	base := start(t, map[string]string{"ROLE": "ingest"})
	// /metrics answers once the database is open and the routes are set.
	testproc.Eventually(t, 20*time.Second, "the ingest role serving", func() error {
		if s := status(t, http.MethodGet, base+"/metrics", ""); s != http.StatusOK {
			return &statusError{"/metrics", s}
		}
		return nil
	})
	if s := status(t, http.MethodGet, base+"/purchases/u1", ""); s != http.StatusNotFound {
		t.Errorf("GET /purchases/u1: %d, want 404", s)
	}
	if s := status(t, http.MethodPost, base+"/claims", claim); s != http.StatusNotFound {
		t.Errorf("POST /claims: %d, want 404", s)
	}
	// Its readiness includes Kafka, which is away.
	if s := status(t, http.MethodGet, base+"/readyz", ""); s != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz with Kafka away: %d, want 503", s)
	}
}

func TestAnUnknownRoleIsRefused(t *testing.T) {
	_, err := ConfigFromEnv(func(k string) string { return map[string]string{"ROLE": "reader"}[k] })
	if err == nil || !strings.Contains(err.Error(), `ROLE: "reader"`) {
		t.Fatalf("ROLE=reader: %v, want an error naming it", err)
	}
}

type statusError struct {
	path string
	code int
}

func (e *statusError) Error() string { return e.path + ": status " + http.StatusText(e.code) }
