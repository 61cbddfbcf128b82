package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metrics describe the consume → store pipeline. The first two keep the
// seed system's names.
type Metrics struct {
	processed         *prometheus.CounterVec
	processingSeconds prometheus.Histogram
	stored            prometheus.Counter
	duplicates        prometheus.Counter
	storeSeconds      prometheus.Histogram
	fetchErrors       *prometheus.CounterVec
}

// NewMetrics registers the pipeline's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kafka_messages_processed_total",
			Help: "Kafka messages handled: status=success stored (or already stored), status=error sent to the dead-letter topic.",
		}, []string{"status"}),
		processingSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kafka_message_processing_seconds",
			Help:    "Time from a message's arrival in the consumer to its offset commit, batching included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "purchases_stored_total",
			Help: "Purchases written to the store for the first time.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "purchases_duplicates_total",
			Help: "Purchases redelivered by Kafka that were already stored and were skipped.",
		}),
		storeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "purchases_store_batch_seconds",
			Help:    "Time to write one batch of purchases to the store.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}),
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kafka_consumer_fetch_errors_total",
			Help: "Fetches of a partition that failed, by Kafka error code; the partition is fetched again from the same position.",
		}, []string{"code"}),
	}
	// Both statuses exist from the start, so a rate over them is 0, not absent.
	m.processed.WithLabelValues("success")
	m.processed.WithLabelValues("error")
	reg.MustRegister(m.processed, m.processingSeconds, m.stored, m.duplicates, m.storeSeconds, m.fetchErrors)
	return m
}
