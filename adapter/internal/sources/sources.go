// Package sources routes the store's queries to the backend that answers
// them: custom and external rule metrics to Prometheus, consumer group lag
// to Kafka. It is the store's only way to the backends; the API never calls
// them itself.
package sources

import (
	"context"
	"errors"
	"fmt"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// Router implements store.Fetcher over the backends.
type Router struct {
	Prometheus *promsource.Source
	Kafka      *lag.Source // nil without --kafka-bootstrap-servers
}

// ErrLagOff is the answer to a lag query when no Kafka is configured.
var ErrLagOff = errors.New("lag metrics are off: the adapter runs without --kafka-bootstrap-servers")

// Fetch answers one store query from its backend.
func (r *Router) Fetch(ctx context.Context, q store.Query) ([]store.Sample, error) {
	switch q := q.(type) {
	case promsource.CustomQuery:
		res, err := r.Prometheus.QueryCustom(ctx, q)
		return res.Samples, err
	case promsource.ExternalQuery:
		res, err := r.Prometheus.QueryExternal(ctx, q)
		return res.Samples, err
	case lag.Query:
		if r.Kafka == nil {
			return nil, ErrLagOff
		}
		return r.Kafka.Fetch(ctx, q)
	default:
		return nil, fmt.Errorf("no source answers %T", q)
	}
}
