// Package backend measures the adapter's calls to its backends
// (Prometheus, Kafka): how long each kind of query takes and how often it
// fails. Both sources report through it, so one metric family covers them
// and one alert watches them.
package backend

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the backend-call metrics.
type Metrics struct {
	seconds *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "adapter_backend_query_duration_seconds",
			Help:    "Time of one query to a backend (prometheus, kafka), by kind of query.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"backend", "kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_backend_errors_total", Help: "Failed queries to a backend, by kind of query.",
		}, []string{"backend", "kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.seconds, m.errors)
	}
	return m
}

// Observer records the calls to one backend.
type Observer struct {
	m       *Metrics
	backend string
}

// For returns the observer of a backend. Its error counters start at 0
// for each kind of query, so an alert on their rate sees the first error
// as an increase and a dashboard shows 0, not "no data".
func (m *Metrics) For(backend string, kinds ...string) *Observer {
	for _, k := range kinds {
		m.errors.WithLabelValues(backend, k)
	}
	return &Observer{m: m, backend: backend}
}

// Observe times one call that started at start and counts its failure.
func (o *Observer) Observe(kind string, start time.Time, err error) {
	if o == nil {
		return
	}
	o.m.seconds.WithLabelValues(o.backend, kind).Observe(time.Since(start).Seconds())
	if err != nil {
		o.m.errors.WithLabelValues(o.backend, kind).Inc()
	}
}
