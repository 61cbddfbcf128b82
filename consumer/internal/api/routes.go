// Package api is the Customer Management API: it serves the purchases the
// ingest pipeline stored.
package api

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/consumer/internal/store"
	"github.com/purchase-system/purchase-system/servicekit/health"
	"github.com/purchase-system/purchase-system/servicekit/httpjson"
	"github.com/purchase-system/purchase-system/servicekit/httpmetrics"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

// Store reads purchases.
type Store interface {
	UserPurchases(ctx context.Context, userID string, limit int) ([]purchase.Purchase, error)
	Purchase(ctx context.Context, userID, id string) (purchase.Purchase, bool, error)
	Page(ctx context.Context, after store.Cursor, limit int) ([]purchase.Purchase, store.Cursor, error)
	Claim(ctx context.Context, key string, p purchase.Purchase) (purchase.Purchase, error)
}

// Deps are what the API needs from the rest of the program.
type Deps struct {
	// Store is nil for a process that only consumes (ROLE=ingest): it
	// serves health and metrics, and no reads or keys.
	Store     Store
	Readiness []health.Check
	Registry  *prometheus.Registry
	Logger    *slog.Logger
}

// NewServer returns the API's handler. The route table below is the whole
// API.
func NewServer(d Deps) http.Handler {
	r := chi.NewRouter()
	m := httpmetrics.New(d.Registry)
	r.Use(httpjson.RequestID, m.Middleware)
	httpjson.Unrouted(r)

	if d.Store != nil {
		r.Get("/purchases/{userid}", handleUserPurchases(d.Store, d.Logger))
		r.Get("/purchases/{userid}/{id}", handlePurchase(d.Store, d.Logger))
		r.Get("/purchases", handlePage(d.Store, d.Logger))
		r.Post("/claims", handleClaim(d.Store, d.Logger))
		m.Expect(http.MethodGet, "/purchases/{userid}", http.StatusOK)
		m.Expect(http.MethodGet, "/purchases", http.StatusOK)
	}

	r.Get("/healthz", health.Healthz())
	r.Get("/readyz", health.Readyz(d.Logger, d.Readiness...))
	r.Method(http.MethodGet, "/metrics", httpmetrics.Handler(d.Registry))
	return r
}
