// Package selfmetrics serves the adapter's own metrics on a plain HTTP
// port that needs no API server credentials, so any Prometheus can scrape
// them. The metrics themselves are defined beside the code that updates
// them (store, catalog, metricsapi, backend, lag, configwatch) and
// registered on one registry.
package selfmetrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the gatherers' metrics on /metrics: the adapter's
// registry and the API server library's, which also holds the Go runtime
// and process metrics (so they are not registered twice). /healthz
// answers ok.
func Handler(gatherers ...prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers(gatherers), promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}
