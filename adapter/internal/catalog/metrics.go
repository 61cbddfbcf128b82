package catalog

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the catalog's self-metrics.
type Metrics struct {
	discovered       *prometheus.GaugeVec
	discoveries      *prometheus.CounterVec
	discoverySeconds prometheus.Histogram
}

// NewMetrics creates the catalog's metrics and registers them on reg
// (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		discovered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_discovered_metrics", Help: "Metrics the rules currently yield, by API.",
		}, []string{"api"}),
		discoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_discoveries_total", Help: "Metric discoveries, by result: complete, or partial (a rule's discovery failed and it kept what it found before).",
		}, []string{"result"}),
		discoverySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "adapter_discovery_duration_seconds", Help: "Time of one discovery of every rule.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.discoveries.WithLabelValues("complete")
	m.discoveries.WithLabelValues("partial")
	if reg != nil {
		reg.MustRegister(m.discovered, m.discoveries, m.discoverySeconds)
	}
	return m
}
