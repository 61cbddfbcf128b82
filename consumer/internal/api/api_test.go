package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/consumer/internal/api"
	"github.com/purchase-system/purchase-system/consumer/internal/store"
	"github.com/purchase-system/purchase-system/consumer/storetest"
	"github.com/purchase-system/purchase-system/servicekit/health"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

func newServer(t *testing.T, checks ...health.Check) (*httptest.Server, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), storetest.SQLite(t).URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(api.NewServer(api.Deps{
		Store: st, Readiness: checks, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}))
	t.Cleanup(srv.Close)
	return srv, st
}

func get(t *testing.T, url string, v any) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
	}
	return resp.StatusCode, string(b)
}

func TestUserPurchasesAndPaging(t *testing.T) {
	srv, st := newServer(t)
	t0 := time.Now()
	var recs []store.Record
	for i := range 25 {
		recs = append(recs, store.Record{Purchase: purchase.Purchase{
			ID: uuid.NewString(), Username: "n", UserID: "u 1", Price: float64(i + 1), Timestamp: t0.Add(time.Duration(i) * time.Second),
		}})
	}
	if _, err := st.Insert(context.Background(), recs); err != nil {
		t.Fatal(err)
	}

	var ps []purchase.Purchase
	if code, body := get(t, srv.URL+"/purchases/u%201?limit=10", &ps); code != 200 || len(ps) != 10 || ps[0].Price != 25 {
		t.Fatalf("= %d, %d purchases, first %+v: %s", code, len(ps), ps, body)
	}
	var empty []purchase.Purchase
	if code, body := get(t, srv.URL+"/purchases/nobody", &empty); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("unknown user = %d %s, want 200 []", code, body)
	}

	seen := 0
	next := ""
	for pages := 0; ; pages++ {
		var page api.Page
		if code, body := get(t, srv.URL+"/purchases?limit=10&after="+next, &page); code != 200 {
			t.Fatalf("page: %d %s", code, body)
		}
		seen += len(page.Purchases)
		if next = page.Next; next == "" {
			if pages != 2 {
				t.Fatalf("25 purchases in %d pages of 10", pages+1)
			}
			break
		}
	}
	if seen != 25 {
		t.Fatalf("paged over %d purchases, want 25", seen)
	}
}

func TestBadQueriesAre400WithTheReason(t *testing.T) {
	srv, _ := newServer(t)
	for url, want := range map[string]string{
		"/purchases/u?limit=0":      "limit: must be an integer from 1 to 10000",
		"/purchases/u?limit=abc":    "limit: must be an integer",
		"/purchases/u?limit=10001":  "limit: must be an integer from 1 to 10000",
		"/purchases?after=garbage!": "after: not a cursor returned by this API",
		"/purchases/%07":            "userid: must contain only printable characters",
	} {
		code, body := get(t, srv.URL+url, nil)
		if code != 400 || !strings.Contains(body, want) {
			t.Errorf("%s = %d %s, want 400 containing %q", url, code, body, want)
		}
	}
}

func TestReadyzNamesTheFailingDependency(t *testing.T) {
	kafkaDown := errors.New("kafka unreachable: kafka-0.data:9092: Local: Timed out")
	srv, _ := newServer(t,
		health.Check{Name: "database", Check: func(context.Context) error { return nil }},
		health.Check{Name: "kafka", Check: func(context.Context) error { return kafkaDown }},
	)
	code, body := get(t, srv.URL+"/readyz", nil)
	if code != 503 || !strings.Contains(body, "not ready: kafka unavailable") || strings.Contains(body, "database") {
		t.Fatalf("= %d %s, want 503 naming only kafka", code, body)
	}
	// Which broker is not the caller's business: the cause is logged.
	if strings.Contains(body, "kafka-0.data") {
		t.Fatalf("the answer leaks the broker's address: %s", body)
	}
	if code, _ := get(t, srv.URL+"/healthz", nil); code != 200 {
		t.Fatalf("/healthz = %d: liveness must not depend on Kafka", code)
	}
}
