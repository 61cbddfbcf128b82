package metricsapi

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the API's self-metrics. The metric label is a metric the
// catalog serves or "<unknown>": names callers invent are not series.
type Metrics struct {
	requestSeconds *prometheus.HistogramVec
	requestErrors  *prometheus.CounterVec
	sampleAge      *prometheus.HistogramVec
	staleDropped   *prometheus.CounterVec
}

// NewMetrics creates the API's metrics and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "adapter_request_duration_seconds", Help: "Time to answer a custom or external metrics API request.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"api", "metric"}),
		requestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_request_errors_total", Help: "API requests answered with an error, by reason (notfound, serviceunavailable, badrequest, forbidden, toomanyrequests).",
		}, []string{"api", "metric", "reason"}),
		sampleAge: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "adapter_served_sample_age_seconds", Help: "Age of the samples served to the HPA.",
			Buckets: []float64{1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300},
		}, []string{"metric"}),
		staleDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_stale_samples_dropped_total", Help: "Samples not served because they were older than --max-sample-age or had no timestamp.",
		}, []string{"metric"}),
	}
	if reg != nil {
		reg.MustRegister(m.requestSeconds, m.requestErrors, m.sampleAge, m.staleDropped)
	}
	return m
}
