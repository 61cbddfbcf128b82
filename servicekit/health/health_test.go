package health_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/servicekit/health"
)

func get(t *testing.T, h http.Handler, url string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, url, nil))
	return rec.Code, rec.Body.String()
}

func TestReadyzExcludesNamedChecks(t *testing.T) {
	calls := map[string]int{}
	check := func(name string, err error) health.Check {
		return health.Check{Name: name, Check: func(context.Context) error { calls[name]++; return err }}
	}
	h := health.Readyz(slog.New(slog.NewTextHandler(io.Discard, nil)),
		check("shutdown", nil), check("kafka", errors.New("broker at 10.0.0.1:9092 refused")))

	code, body := get(t, h, "/readyz")
	if code != 503 || !strings.Contains(body, "not ready: kafka unavailable") || strings.Contains(body, "10.0.0.1") {
		t.Fatalf("/readyz = %d %s, want 503 naming kafka without its address", code, body)
	}
	calls = map[string]int{}
	if code, body := get(t, h, "/readyz?exclude=kafka"); code != 200 {
		t.Fatalf("/readyz?exclude=kafka = %d %s, want 200", code, body)
	}
	if calls["kafka"] != 0 || calls["shutdown"] != 1 {
		t.Fatalf("checks run %v, want only shutdown", calls)
	}
	// A misspelt probe path must not pass silently.
	if code, body := get(t, h, "/readyz?exclude=kafak"); code != 400 || !strings.Contains(body, "shutdown, kafka") {
		t.Fatalf("/readyz?exclude=kafak = %d %s, want 400 listing the checks", code, body)
	}
}
