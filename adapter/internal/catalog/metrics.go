package catalog

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the catalog's self-metrics.
type Metrics struct {
	ruleLastSuccess *prometheus.GaugeVec
	ruleSeries      *prometheus.GaugeVec
	ruleMetrics     *prometheus.GaugeVec
	ruleFailing     *prometheus.GaugeVec
	ruleErrors      *prometheus.CounterVec

	discovered       *prometheus.GaugeVec
	discoveries      *prometheus.CounterVec
	discoverySeconds prometheus.Histogram
}

// NewMetrics creates the catalog's metrics and registers them on reg
// (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ruleLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_rule_last_discovery_success_timestamp_seconds", Help: "When each rule's discovery last finished (Unix time); the rule is its file:line.",
		}, []string{"rule"}),
		ruleSeries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_rule_series", Help: "Series each rule's seriesQuery matched in its last finished discovery.",
		}, []string{"rule"}),
		ruleMetrics: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_rule_metrics", Help: "Metrics each rule yielded in its last finished discovery.",
		}, []string{"rule"}),
		ruleFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_rule_discovery_failing", Help: "1 while a rule's discovery fails: it serves what it last found, for --rule-stale-after.",
		}, []string{"rule"}),
		ruleErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_rule_discovery_errors_total", Help: "Failed discoveries of each rule, by kind: unreachable, timeout, query (Prometheus refused it), prometheus (another error of Prometheus').",
		}, []string{"rule", "kind"}),
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
		reg.MustRegister(m.discovered, m.discoveries, m.discoverySeconds,
			m.ruleLastSuccess, m.ruleSeries, m.ruleMetrics, m.ruleFailing, m.ruleErrors)
	}
	return m
}

// forgetRule drops a removed rule's series.
func (m *Metrics) forgetRule(source string) {
	l := prometheus.Labels{"rule": source}
	m.ruleLastSuccess.DeletePartialMatch(l)
	m.ruleSeries.DeletePartialMatch(l)
	m.ruleMetrics.DeletePartialMatch(l)
	m.ruleFailing.DeletePartialMatch(l)
	m.ruleErrors.DeletePartialMatch(l)
}
