package lag

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// The external metrics this package serves, and their labels.
const (
	MetricLag        = "kafka_consumergroup_lag"
	MetricLagSeconds = "kafka_consumergroup_lag_seconds"
	LabelGroup       = "consumergroup"
	LabelTopic       = "topic"
)

// Query is what an external metric selector asks for: a store query. One
// computation gives both kafka_consumergroup_lag and
// kafka_consumergroup_lag_seconds.
type Query struct {
	Groups []string // at least one
	Topics []string // empty: every topic the group committed on
	Options
}

// Key identifies the query in the store.
func (q Query) Key() string {
	return "kafka-lag|" + strings.Join(q.Groups, ",") + "|" + strings.Join(q.Topics, ",") + q.Options.key()
}

// Coalesces tells the store that the source gathers concurrent lag
// fetches into rounds and bounds its own requests (see Source).
func (Query) Coalesces() bool { return true }

// ParseSelector reads consumergroup and topic (=, ==, in) from a metric
// selector; anything else is an error that says what is supported.
//
// The consumer group is required. Without it the answer would mean
// nothing: groups that never read a topic would count its whole log as
// lag (an HPA would scale to its maximum), and one idle group without
// commits would fail everyone's request.
func ParseSelector(sel labels.Selector) (Query, error) {
	var f Query
	if sel == nil {
		sel = labels.Everything()
	}
	reqs, _ := sel.Requirements()
	for _, r := range reqs {
		op := r.Operator()
		vals := r.Values().List()
		if op == selection.Equals || op == selection.DoubleEquals {
			if ok, err := f.setOption(r.Key(), vals[0]); ok {
				if err != nil {
					return f, fmt.Errorf("metric selector %q: %w", sel, err)
				}
				continue
			}
		}
		if op != selection.Equals && op != selection.DoubleEquals && op != selection.In {
			return f, fmt.Errorf("metric selector %q: only %s and %s with = or in, and the options with =, are supported", sel, LabelGroup, LabelTopic)
		}
		switch r.Key() {
		case LabelGroup:
			f.Groups = vals
		case LabelTopic:
			f.Topics = vals
		default:
			return f, fmt.Errorf("metric selector %q: unknown label %q (the labels are %s and %s; the options %s, %s, %s, %s, %s)", sel, r.Key(), LabelGroup, LabelTopic,
				LabelOffsetReset, LabelExcludePersistentLag, LabelLagThreshold, LabelLimitToPartitionsWithLag, LabelEvenDistribution)
		}
	}
	if err := f.Options.validate(); err != nil {
		return f, fmt.Errorf("metric selector %q: %w", sel, err)
	}
	if len(f.Groups) == 0 {
		return f, fmt.Errorf("metric selector %q names no consumer group: say whose lag, e.g. %s=purchase-consumer-group,%s=purchases (without a group, groups that never read a topic would count its whole log as lag)",
			sel, LabelGroup, LabelTopic)
	}
	return f, nil
}

// Fetch computes, for every group and topic the query selects, the lag
// (one sample per group and topic, summed over partitions, Metric
// kafka_consumergroup_lag) and the time to drain it (Metric
// kafka_consumergroup_lag_seconds; missing until two samples of the
// group's consumption exist).
func (s *Source) Fetch(ctx context.Context, q Query) ([]store.Sample, error) {
	return s.compute(ctx, q, true)
}

// Peek computes what Fetch would, without recording anything: the
// consumption history behind lag seconds and the "as last served" gauges
// stay as the HPA path left them (for explaining; its lag seconds use the
// history as it stands).
func (s *Source) Peek(ctx context.Context, q Query) ([]store.Sample, error) {
	return s.compute(ctx, q, false)
}

func (s *Source) compute(ctx context.Context, q Query, record bool) ([]store.Sample, error) {
	if len(q.Groups) == 0 {
		return nil, fmt.Errorf("no consumer group asked for")
	}
	var out []store.Sample
	for _, g := range q.Groups {
		start := time.Now()
		parts, err := s.GroupPartitions(ctx, g, q.Topics)
		if record {
			s.metrics.computeSeconds.Observe(time.Since(start).Seconds())
		}
		if err != nil {
			return nil, &Error{Group: g, Cause: err}
		}
		now := time.Now()
		lags := q.Options.apply(Calculate(parts), s.stillSince(g, record, now), now)
		for _, t := range ByTopic(g, lags) {
			labels := map[string]string{LabelGroup: g, LabelTopic: t.Topic}
			served := q.Options.capped(t)
			out = append(out, store.Sample{Metric: MetricLag, Labels: labels, Value: float64(served), Timestamp: now})
			var rate *Rate
			if record {
				s.metrics.lag.WithLabelValues(g, t.Topic).Set(float64(served))
				rate = s.observeRate(g, t.Topic, now, t.Committed)
			} else {
				rate = s.rateWith(g, t.Topic, now, t.Committed)
			}
			perSec, known := rate.PerSecond()
			if !known && t.Lag > 0 {
				// Not enough history for a rate yet: missing, not a guess.
				continue
			}
			secs := DrainSeconds(t.Lag, perSec, s.DrainCap)
			out = append(out, store.Sample{Metric: MetricLagSeconds, Labels: labels, Value: secs, Timestamp: now})
			if record {
				s.metrics.lagSeconds.WithLabelValues(g, t.Topic).Set(secs)
			}
		}
	}
	return out, nil
}

// stillSince returns, for a group's partitions, since when each commit
// has stood where it is now with lag behind it (a partition without lag
// starts afresh: a consumer idle at its commit is not stuck); with record,
// what it sees is kept for the next computation (a peek leaves the history
// as it was).
func (s *Source) stillSince(group string, record bool, now time.Time) func(PartitionLag) time.Time {
	return func(l PartitionLag) time.Time {
		k := stillKey{group, l.Topic, l.Partition.Partition}
		s.mu.Lock()
		defer s.mu.Unlock()
		if l.Lag == 0 {
			if record {
				delete(s.still, k)
			}
			return now
		}
		st, ok := s.still[k]
		if !ok || st.committed != l.Committed {
			st = stillSince{committed: l.Committed, since: now}
			if record {
				s.still[k] = st
			}
		}
		return st.since
	}
}

// rateWith is the group's consumption rate with one more observation,
// computed on a copy: the kept history is not changed.
func (s *Source) rateWith(group, topic string, at time.Time, committed int64) *Rate {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := Rate{Window: s.RateWindow}
	if r, ok := s.rates[[2]string{group, topic}]; ok {
		cp = *r
		cp.samples = append([]rateSample(nil), r.samples...)
	}
	cp.Observe(at, committed)
	return &cp
}

func (s *Source) observeRate(group, topic string, at time.Time, committed int64) *Rate {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{group, topic}
	r, ok := s.rates[k]
	if !ok {
		r = &Rate{Window: s.RateWindow}
		s.rates[k] = r
	}
	r.Observe(at, committed)
	cp := *r
	cp.samples = append([]rateSample(nil), r.samples...)
	return &cp
}
