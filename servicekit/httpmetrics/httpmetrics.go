// Package httpmetrics records HTTP requests under the names the seed
// system's Flask services exported (prometheus_flask_exporter), so the
// seed's PromQL, dashboards and the adapter's rules work unchanged.
package httpmetrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/purchase-system/purchase-system/servicekit/httpjson"
)

// methods are the label values of the method label; any other method a
// client invents is "other": one series per invented method would grow
// without bound.
var methods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

func methodLabel(m string) string {
	if methods[m] {
		return m
	}
	return "other"
}

// notCounted are probe and scrape endpoints: counting them would inflate
// the request rate that drives scaling.
var notCounted = map[string]bool{"/metrics": true, "/healthz": true, "/readyz": true}

// Buckets are prometheus_flask_exporter's default latency buckets.
var Buckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// Metrics holds the request counter and latency histogram of one service.
type Metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	unmatched *prometheus.CounterVec
}

// New registers the HTTP metrics on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		// Registered as "flask_http_request_total"; in OpenMetrics the
		// family is flask_http_request and its creation time is exposed as
		// flask_http_request_created, as the seed's exporter did.
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flask_http_request_total",
			Help: "Total number of HTTP requests by method, status and route.",
		}, []string{"method", "status", "path"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flask_http_request_duration_seconds",
			Help:    "HTTP request latency by method, status and route.",
			Buckets: Buckets,
		}, []string{"method", "status", "path"}),
		// Requests no route matched (404/405 for paths and methods a
		// scanner invents) are counted apart: they do not drive scaling.
		unmatched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flask_http_unmatched_request_total",
			Help: "HTTP requests no route matched, by method and status; not part of flask_http_request_total.",
		}, []string{"method", "status"}),
	}
	reg.MustRegister(m.requests, m.duration, m.unmatched)
	return m
}

// Expect creates the series of a route's usual answer at 0, so they exist
// from the service's start. Prometheus then sees a pod's first requests as
// an increase from 0 — a series that first appears already at 405 gives
// rate() nothing to count — and the metrics adapter can discover the
// request rate, and serve 0, before any request has come.
func (m *Metrics) Expect(method, path string, status int) {
	labels := prometheus.Labels{"method": method, "status": strconv.Itoa(status), "path": path}
	m.requests.With(labels)
	m.duration.With(labels)
}

// Middleware counts every request except probes and scrapes, labelled with
// the chi route pattern. It must be installed with chi's Use so the
// pattern is known once the route has run.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if notCounted[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)

		status := ww.Status()
		if status == 0 {
			status = http.StatusOK // handler wrote nothing: net/http sends 200
		}
		method := methodLabel(r.Method)
		rc := chi.RouteContext(r.Context())
		if rc == nil || rc.RoutePattern() == "" {
			m.unmatched.WithLabelValues(method, strconv.Itoa(status)).Inc()
			return
		}
		labels := prometheus.Labels{"method": method, "status": strconv.Itoa(status), "path": rc.RoutePattern()}
		m.requests.With(labels).Inc()
		m.duration.With(labels).Observe(time.Since(start).Seconds())
	})
}

// Handler serves reg in the Prometheus text format, or OpenMetrics (with
// _created samples) when the scraper asks for it.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics:                   true,
		EnableOpenMetricsTextCreatedSamples: true,
	})
}

// Only serves GET /metrics and nothing else, for a listener of its own: a
// NetworkPolicy can then let the scraper reach the metrics port without
// reaching the API (policies see ports, not paths).
func Only(reg *prometheus.Registry) http.Handler {
	r := chi.NewRouter()
	httpjson.Unrouted(r)
	r.Method(http.MethodGet, "/metrics", Handler(reg))
	return r
}
