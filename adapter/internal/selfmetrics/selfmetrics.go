// Package selfmetrics is the adapter's own observability: request and
// backend latency, errors, cache behaviour, lag computation time and the
// age of what is served. They are served on a plain HTTP port that needs
// no API server credentials, so any Prometheus can scrape them.
package selfmetrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the adapter's self-metrics.
type Metrics struct {
	Registry *prometheus.Registry

	// RequestSeconds: time to answer an API request, by API (custom,
	// external) and metric.
	RequestSeconds *prometheus.HistogramVec
	// RequestErrors: API requests answered with an error, by API, metric
	// and reason (not_found, backend, stale, selector).
	RequestErrors *prometheus.CounterVec
	// BackendSeconds and BackendErrors: queries to Prometheus and Kafka.
	BackendSeconds *prometheus.HistogramVec
	BackendErrors  *prometheus.CounterVec
	// StoreLookups: reads of the value store, by result: hit (fresh
	// value), wait (a fetch was already running and was joined), fetch
	// (this read started the fetch).
	StoreLookups *prometheus.CounterVec
	// StoreKeys: how many (metric, namespace, selector) values are kept:
	// grows with what HPAs ask for, not with the series in Prometheus.
	StoreKeys prometheus.Gauge
	// LagSeconds: time to compute one consumer group's lag.
	LagComputeSeconds prometheus.Histogram
	// SampleAge: age of the samples served, by metric.
	SampleAge *prometheus.HistogramVec
	// StaleDropped: samples not served because they were older than the
	// maximum age.
	StaleDropped *prometheus.CounterVec
	// ConfigReloads by result; ConfigLastReloadSuccess is 1 when the file
	// in use is the file on disk.
	ConfigReloads           *prometheus.CounterVec
	ConfigLastReloadSuccess prometheus.Gauge
	// DiscoveredMetrics: metrics the rules currently yield, by API.
	DiscoveredMetrics *prometheus.GaugeVec
	// KafkaLag and KafkaLagSeconds: the last lag computed for an HPA, by
	// consumer group and topic, so dashboards and alerts see what the HPA
	// saw.
	KafkaLag        *prometheus.GaugeVec
	KafkaLagSeconds *prometheus.GaugeVec
}

// New creates and registers the self-metrics.
func New() *Metrics {
	fast := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		RequestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "adapter_request_duration_seconds", Help: "Time to answer a custom or external metrics API request.", Buckets: fast,
		}, []string{"api", "metric"}),
		RequestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_request_errors_total", Help: "API requests answered with an error, by reason.",
		}, []string{"api", "metric", "reason"}),
		BackendSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "adapter_backend_query_duration_seconds", Help: "Time of one query to a backend (prometheus, kafka).", Buckets: fast,
		}, []string{"backend", "kind"}),
		BackendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_backend_errors_total", Help: "Failed backend queries.",
		}, []string{"backend", "kind"}),
		StoreLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_store_lookups_total", Help: "Reads of the value store: hit, wait (joined a running fetch) or fetch.",
		}, []string{"result"}),
		StoreKeys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "adapter_store_keys", Help: "Values kept in the store (metric, namespace, selector); expire when no longer asked for.",
		}),
		LagComputeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "adapter_kafka_lag_compute_seconds", Help: "Time to compute one consumer group's lag from the brokers.", Buckets: fast,
		}),
		SampleAge: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "adapter_served_sample_age_seconds", Help: "Age of the samples served to the HPA.",
			Buckets: []float64{1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300},
		}, []string{"metric"}),
		StaleDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_stale_samples_dropped_total", Help: "Samples not served because they were older than --max-sample-age.",
		}, []string{"metric"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_config_reloads_total", Help: "Rule file reloads, by result.",
		}, []string{"result"}),
		ConfigLastReloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "adapter_config_last_reload_successful", Help: "1 if the last rule file reload succeeded.",
		}),
		DiscoveredMetrics: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_discovered_metrics", Help: "Metrics the rules currently yield, by API.",
		}, []string{"api"}),
		KafkaLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_kafka_consumergroup_lag", Help: "Consumer group lag in messages, as last served (newest offset minus committed, summed over the topic's partitions).",
		}, []string{"consumergroup", "topic"}),
		KafkaLagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_kafka_consumergroup_lag_seconds", Help: "Estimated seconds for the group to consume its lag, as last served.",
		}, []string{"consumergroup", "topic"}),
	}
	m.Registry.MustRegister(m.RequestSeconds, m.RequestErrors, m.BackendSeconds, m.BackendErrors, m.StoreLookups,
		m.StoreKeys, m.LagComputeSeconds, m.SampleAge, m.StaleDropped, m.ConfigReloads, m.ConfigLastReloadSuccess,
		m.DiscoveredMetrics, m.KafkaLag, m.KafkaLagSeconds)
	return m
}

// InitBackend creates a backend's error counters at 0 for each kind of
// query, so an alert on their rate sees the first error as an increase and
// a dashboard shows 0, not "no data".
func (m *Metrics) InitBackend(backend string, kinds ...string) {
	for _, k := range kinds {
		m.BackendErrors.WithLabelValues(backend, k)
	}
}

// Backend times one backend call and counts its failure.
func (m *Metrics) Backend(backend, kind string, start time.Time, err error) {
	m.BackendSeconds.WithLabelValues(backend, kind).Observe(time.Since(start).Seconds())
	if err != nil {
		m.BackendErrors.WithLabelValues(backend, kind).Inc()
	}
}

// Handler serves the self-metrics and, beside them, what extra gatherers
// collect: the API server library's registry, which also holds the Go
// runtime and process metrics (so they are not registered here again).
func (m *Metrics) Handler(extra ...prometheus.Gatherer) http.Handler {
	gs := prometheus.Gatherers{m.Registry}
	gs = append(gs, extra...)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gs, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}
