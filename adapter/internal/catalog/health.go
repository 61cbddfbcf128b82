package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// A rule's health: when it last discovered, since when it fails and why.
// A rule whose discovery fails keeps serving what it last found for
// StaleAfter, and says so (adapter_rule_discovery_failing, explain); then
// its metrics leave the list, and a request for one answers 503 naming the
// rule and its error — never 404 while the rule exists, since a 404 tells
// the HPA the metric is gone (prometheus-adapter#636).

// RuleHealth is one rule's discovery record.
type RuleHealth struct {
	Rule *rules.Rule
	// LastSuccess is when its discovery last finished (zero: never).
	LastSuccess time.Time
	// FailingSince is when its discovery started failing (zero: it did
	// not fail since it last finished); LastErr is the latest failure.
	FailingSince time.Time
	LastErr      error
	// Series and Metrics count what its last finished discovery found.
	Series, Metrics int
	// Expired: it has failed for longer than StaleAfter since it last
	// finished (or never finished): what it found is no longer served.
	Expired bool
	// MetricNames are the metrics its last finished discovery yielded;
	// Conflicts those of a team's rule that another rule serves in its
	// namespace (not served from it).
	MetricNames []string
	Conflicts   []string
}

type health struct {
	lastSuccess, failingSince time.Time
	lastErr                   error
}

// expired reports whether a failing rule's last discovery is too old to
// serve.
func (h *health) expired(now time.Time, staleAfter time.Duration) bool {
	return h != nil && !h.failingSince.IsZero() && now.Sub(h.lastSuccess) > staleAfter
}

var errorKinds = []string{"unreachable", "timeout", "query", "prometheus"}

// errorKind sorts a discovery failure for adapter_rule_discovery_errors_total.
func errorKind(err error) string {
	var api *promv1.Error
	if errors.As(err, &api) {
		switch api.Type {
		case promv1.ErrBadData, promv1.ErrExec:
			return "query"
		case promv1.ErrTimeout, promv1.ErrCanceled:
			return "timeout"
		case promv1.ErrClient:
			return "unreachable"
		}
		return "prometheus"
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "timeout"
	}
	return "unreachable"
}

// recordDiscovery updates a rule's health after a discovery round; the
// caller holds c.mu.
func (c *Catalog) recordDiscovery(r *rules.Rule, d promsource.RuleDiscovery, now time.Time) {
	h := c.health[r.Fingerprint]
	if h == nil {
		h = &health{}
		c.health[r.Fingerprint] = h
	}
	m := c.o.Metrics
	if d.Err != nil {
		if h.failingSince.IsZero() {
			h.failingSince = now
		}
		h.lastErr = d.Err
		m.ruleErrors.WithLabelValues(r.Source, errorKind(d.Err)).Inc()
		m.ruleFailing.WithLabelValues(r.Source).Set(1)
		return
	}
	h.lastSuccess, h.failingSince, h.lastErr = now, time.Time{}, nil
	m.ruleFailing.WithLabelValues(r.Source).Set(0)
	m.ruleLastSuccess.WithLabelValues(r.Source).Set(float64(now.Unix()))
	m.ruleSeries.WithLabelValues(r.Source).Set(float64(len(d.Series)))
	m.ruleMetrics.WithLabelValues(r.Source).Set(float64(len(d.Metrics)))
}

// forgetRules drops the health and the self-metric series of rules no
// longer in use; the caller holds c.mu.
func (c *Catalog) forgetRules() {
	keep := map[string]bool{}
	sources := map[string]bool{}
	for _, r := range c.inUse() {
		keep[r.Fingerprint] = true
		sources[r.Source] = true
	}
	for fp := range c.health {
		if !keep[fp] {
			delete(c.health, fp)
		}
	}
	for src := range c.sources {
		if !sources[src] {
			c.o.Metrics.forgetRule(src)
		}
	}
	c.sources = sources
	// Every kind starts at 0, so increase() sees the first failure.
	for _, r := range c.inUse() {
		for _, kind := range errorKinds {
			c.o.Metrics.ruleErrors.WithLabelValues(r.Source, kind)
		}
	}
}

// Health returns every rule's discovery record, in rule order.
func (c *Catalog) Health() []RuleHealth {
	c.mu.RLock()
	defer c.mu.RUnlock()
	now := c.o.Now()
	var out []RuleHealth
	for _, r := range c.inUse() {
		rh := RuleHealth{Rule: r, Conflicts: c.conflicts[r.Fingerprint]}
		if h := c.health[r.Fingerprint]; h != nil {
			rh.LastSuccess, rh.FailingSince, rh.LastErr = h.lastSuccess, h.failingSince, h.lastErr
			rh.Expired = h.expired(now, c.o.StaleAfter)
		}
		if d, ok := c.byRule[r.Fingerprint]; ok {
			rh.Series, rh.Metrics = len(d.Series), len(d.Metrics)
			for _, m := range d.Metrics {
				rh.MetricNames = append(rh.MetricNames, m.Name)
			}
		}
		out = append(out, rh)
	}
	return out
}

// RuleFailingError is a request for a metric no rule serves now while a
// rule that may yield it cannot discover: the metric may exist, so the
// answer is 503 (the HPA keeps its scale), not 404 (the HPA acts as if
// the metric were gone).
type RuleFailingError struct{ Msg string }

func (e *RuleFailingError) Error() string { return e.Msg }

// failingRuleFor returns an error naming a failing rule (of the external
// or the custom rules) that may yield name, or nil; the caller holds c.mu
// (read).
func (c *Catalog) failingRuleFor(ns, name string, external bool) error {
	now := c.o.Now()
	for _, r := range c.inUse() {
		h := c.health[r.Fingerprint]
		if r.External != external || !in(r, ns) || h == nil || h.failingSince.IsZero() || !r.MayYield(name) {
			continue
		}
		last := "it never finished a discovery"
		if !h.lastSuccess.IsZero() {
			last = fmt.Sprintf("it last finished %s ago", now.Sub(h.lastSuccess).Round(time.Second))
		}
		return &RuleFailingError{fmt.Sprintf("metric %s is not served now: rule %s, which may serve it, cannot discover since %s (%s): %v",
			name, r.Source, h.failingSince.UTC().Format(time.RFC3339), last, h.lastErr)}
	}
	return nil
}
