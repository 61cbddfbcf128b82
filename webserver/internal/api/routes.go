// Package api is the Customer Web Server's HTTP API.
package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/servicekit/health"
	"github.com/purchase-system/purchase-system/servicekit/httpjson"
	"github.com/purchase-system/purchase-system/servicekit/httpmetrics"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

// Publisher puts a purchase into Kafka; nil means acknowledged.
type Publisher interface {
	Publish(ctx context.Context, p purchase.Purchase) error
	Ready(ctx context.Context) error
}

// Customers reads a user's purchases from the Customer Management API.
type Customers interface {
	UserPurchases(ctx context.Context, userID string, query url.Values) (json.RawMessage, error)
	Claim(ctx context.Context, key string, p purchase.Purchase) (purchase.Purchase, error)
}

// Deps are what the API needs from the rest of the program.
type Deps struct {
	Publisher Publisher
	Customers Customers
	// Readiness are checks /readyz runs before Kafka's (the server's own
	// "shutdown").
	Readiness []health.Check
	Registry  *prometheus.Registry
	Logger    *slog.Logger
	Now       func() time.Time
}

// NewServer returns the web server's handler. The route table below is the
// whole API.
func NewServer(d Deps) http.Handler {
	if d.Now == nil {
		d.Now = time.Now
	}
	r := chi.NewRouter()
	m := httpmetrics.New(d.Registry)
	r.Use(httpjson.RequestID, m.Middleware)
	httpjson.Unrouted(r)

	r.Post("/buy", handleBuy(d.Publisher, d.Customers, d.Logger, d.Now))
	r.Get("/getAllUserBuys/{userid}", handleGetAllUserBuys(d.Customers, d.Logger))
	// The answers every pod will give: their series exist from the start,
	// so the HPA reads 0 on an idle pod, not <unknown>.
	m.Expect(http.MethodPost, "/buy", http.StatusCreated)
	m.Expect(http.MethodGet, "/getAllUserBuys/{userid}", http.StatusOK)

	r.Get("/healthz", health.Healthz())
	r.Get("/readyz", health.Readyz(d.Logger, slices.Concat(d.Readiness, []health.Check{{Name: "kafka", Check: d.Publisher.Ready}})...))
	r.Method(http.MethodGet, "/metrics", httpmetrics.Handler(d.Registry))
	return r
}
