package store

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the store's self-metrics.
type Metrics struct {
	lookups  *prometheus.CounterVec
	keys     prometheus.Gauge
	inflight prometheus.Gauge
}

// NewMetrics creates the store's metrics and registers them on reg (not
// registered when reg is nil, as in tests that do not read them).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_store_lookups_total",
			Help: "Reads of the value store: hit (fresh value), wait (joined a running fetch), fetch (started one), refused (too many distinct queries).",
		}, []string{"result"}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "adapter_store_keys", Help: "Distinct queries kept in the store; they expire when no longer asked for.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "adapter_store_fetches_in_flight", Help: "Backend fetches running now.",
		}),
	}
	for _, r := range []string{"hit", "wait", "fetch", "refused"} {
		m.lookups.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.lookups, m.keys, m.inflight)
	}
	return m
}
