// Package promsource gets metric values from Prometheus under the rules:
// discovery asks only for metric names and label names (never every
// series), and each fetch is one small query per metric and namespace —
// pods are filtered in the adapter, so the query does not grow with the
// number of pods (no 25 KB pod-name regexes).
package promsource

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// Source talks to one Prometheus.
type Source struct {
	api     promv1.API
	url     string
	metrics *selfmetrics.Metrics
	// Window is how far back discovery looks for series: a metric whose
	// series all stopped longer ago is no longer offered.
	Window time.Duration
}

// New returns a source for the Prometheus at url.
func New(url string, timeout time.Duration, m *selfmetrics.Metrics) (*Source, error) {
	c, err := api.NewClient(api.Config{Address: url, Client: &http.Client{Timeout: timeout}})
	if err != nil {
		return nil, fmt.Errorf("--prometheus-url %q: %w", url, err)
	}
	m.InitBackend("prometheus", "discovery", "custom", "freshness", "external")
	return &Source{api: promv1.NewAPI(c), url: url, metrics: m, Window: 10 * time.Minute}, nil
}

// wrap names Prometheus and the query in a backend error.
func (s *Source) wrap(what string, err error) error {
	return fmt.Errorf("prometheus at %s: %s: %w", s.url, what, err)
}

// Metric is one Kubernetes metric a rule yields from one series name.
type Metric struct {
	Name      string
	Series    string
	Rule      *rules.Rule
	Resources []schema.GroupResource // custom metrics: what it can be asked for on
}

// Catalog is what the rules currently yield.
type Catalog struct {
	Custom   map[string][]Metric // by metric name
	External map[string][]Metric
}

// Discover asks Prometheus which series names each rule matches and which
// labels they carry. It returns what it found even when some rules
// failed, with the errors joined.
func (s *Source) Discover(ctx context.Context, cfg *rules.Config) (*Catalog, error) {
	cat := &Catalog{Custom: map[string][]Metric{}, External: map[string][]Metric{}}
	var errs []error
	end := time.Now()
	start := end.Add(-s.Window)
	for _, r := range append(append([]*rules.Rule{}, cfg.Rules...), cfg.ExternalRules...) {
		t0 := time.Now()
		names, _, _, err := s.api.LabelValues(ctx, "__name__", []string{r.SeriesQuery}, start, end)
		s.metrics.Backend("prometheus", "discovery", t0, err)
		if err != nil {
			errs = append(errs, s.wrap("discovering rule "+r.Source, err))
			continue
		}
		sq, _ := rules.ParseSeriesQuery(r.SeriesQuery)
		for _, n := range names {
			series := string(n)
			name, ok := r.MetricName(series)
			if !ok {
				continue
			}
			m := Metric{Name: name, Series: series, Rule: r}
			if r.External {
				cat.External[name] = append(cat.External[name], m)
				continue
			}
			match := series + "{" + rules.JoinMatchers(withoutName(sq.Matchers)) + "}"
			t0 := time.Now()
			labels, _, _, err := s.api.LabelNames(ctx, []string{match}, start, end)
			s.metrics.Backend("prometheus", "discovery", t0, err)
			if err != nil {
				errs = append(errs, s.wrap("labels of "+series, err))
				continue
			}
			names := make([]string, len(labels))
			for i, l := range labels {
				names[i] = string(l)
			}
			m.Resources = r.Resources(names)
			if len(m.Resources) > 0 {
				cat.Custom[name] = append(cat.Custom[name], m)
			}
		}
	}
	return cat, errors.Join(errs...)
}

func withoutName(ms []rules.Matcher) []rules.Matcher {
	var out []rules.Matcher
	for _, m := range ms {
		if m.Label != "__name__" {
			out = append(out, m)
		}
	}
	return out
}

// query runs an instant query.
func (s *Source) query(ctx context.Context, kind, q string) (model.Vector, time.Time, error) {
	t0 := time.Now()
	v, _, _, err := s.api.Query(ctx, q, t0)
	s.metrics.Backend("prometheus", kind, t0, err)
	if err != nil {
		return nil, t0, s.wrap("query "+q, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, t0, fmt.Errorf("prometheus at %s: query %s returned %s, not an instant vector", s.url, q, v.Type())
	}
	return vec, t0, nil
}

// CustomQuery is what to fetch for a custom metric key.
type CustomQuery struct {
	Metric    Metric
	Resource  schema.GroupResource // e.g. pods
	Namespace string               // "" for cluster-scoped resources
	// Object restricts the query to one object's series (the
	// namespaces resource asks per namespace); "" for all.
	Object   string
	Selector []rules.Matcher // the request's metric selector
}

// PromQL renders the rule's query for q; exported for tests and for the
// log line of a failing query.
func (q CustomQuery) PromQL() (query, freshness, groupBy string, err error) {
	r := q.Metric.Rule
	groupBy, ok := r.LabelFor(q.Resource)
	if !ok {
		return "", "", "", fmt.Errorf("rule %s does not map resource %s to a label", r.Source, q.Resource)
	}
	var ms []rules.Matcher
	values := map[string][]string{}
	if q.Namespace != "" {
		if nsLabel, ok := r.LabelFor(schema.GroupResource{Resource: "namespaces"}); ok && nsLabel != groupBy {
			ms = append(ms, rules.Matcher{Label: nsLabel, Op: "=", Value: q.Namespace})
			values[nsLabel] = []string{q.Namespace}
		}
	}
	if q.Object != "" {
		ms = append(ms, rules.Matcher{Label: groupBy, Op: "=", Value: q.Object})
		values[groupBy] = []string{q.Object}
	}
	ms = append(ms, q.Selector...)
	matchers := rules.JoinMatchers(ms)
	query, err = r.Render(rules.QueryParts{
		Series: q.Metric.Series, LabelMatchers: matchers, GroupBy: groupBy,
		GroupBySlice: []string{groupBy}, LabelValuesByName: values,
	})
	if err != nil {
		return "", "", "", err
	}
	// The newest raw sample behind each object: what "the sample's own
	// timestamp" is for a rate over a window.
	freshness = fmt.Sprintf("max by (%s) (timestamp(%s{%s}))", groupBy, q.Metric.Series, matchers)
	return query, freshness, groupBy, nil
}

// FetchCustom returns one sample per object: the sum of the object's
// series (a rule without "sum by" yields one series per label set; the
// object's value is their total), stamped with its newest raw sample's
// time. NaN and infinite results are left out, never turned into 0.
func (s *Source) FetchCustom(ctx context.Context, q CustomQuery) ([]store.Sample, error) {
	query, freshness, groupBy, err := q.PromQL()
	if err != nil {
		return nil, err
	}
	vec, evalTime, err := s.query(ctx, "custom", query)
	if err != nil {
		return nil, err
	}
	stamps := map[string]time.Time{}
	if tv, _, err := s.query(ctx, "freshness", freshness); err == nil {
		for _, smp := range tv {
			sec, frac := math.Modf(float64(smp.Value))
			stamps[string(smp.Metric[model.LabelName(groupBy)])] = time.Unix(int64(sec), int64(frac*1e9))
		}
	} else {
		return nil, err
	}
	sums := map[string]float64{}
	for _, smp := range vec {
		obj := string(smp.Metric[model.LabelName(groupBy)])
		v := float64(smp.Value)
		if obj == "" || math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		sums[obj] += v
	}
	out := make([]store.Sample, 0, len(sums))
	for obj, v := range sums {
		ts, ok := stamps[obj]
		if !ok {
			ts = evalTime
		}
		out = append(out, store.Sample{Object: obj, Value: v, Timestamp: ts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Object < out[j].Object })
	return out, nil
}

// ExternalQuery is what to fetch for an external metric key.
type ExternalQuery struct {
	Metric    Metric
	Namespace string
	Selector  []rules.Matcher
}

// FetchExternal returns one sample per result series, labelled as in
// Prometheus, stamped with the newest raw sample of the metric's series.
func (s *Source) FetchExternal(ctx context.Context, q ExternalQuery) ([]store.Sample, error) {
	r := q.Metric.Rule
	ms := append([]rules.Matcher{}, q.Selector...)
	if r.Namespaced() && q.Namespace != "" {
		ms = append([]rules.Matcher{{Label: "namespace", Op: "=", Value: q.Namespace}}, ms...)
	}
	var groupBy []string
	for _, m := range q.Selector {
		groupBy = append(groupBy, m.Label)
	}
	sort.Strings(groupBy)
	matchers := rules.JoinMatchers(ms)
	query, err := r.Render(rules.QueryParts{Series: q.Metric.Series, LabelMatchers: matchers,
		GroupBy: strings.Join(groupBy, ","), GroupBySlice: groupBy})
	if err != nil {
		return nil, err
	}
	vec, evalTime, err := s.query(ctx, "external", query)
	if err != nil {
		return nil, err
	}
	ts := evalTime
	if tv, _, err := s.query(ctx, "freshness", fmt.Sprintf("max(timestamp(%s{%s}))", q.Metric.Series, matchers)); err == nil && len(tv) == 1 {
		sec, frac := math.Modf(float64(tv[0].Value))
		ts = time.Unix(int64(sec), int64(frac*1e9))
	}
	out := make([]store.Sample, 0, len(vec))
	for _, smp := range vec {
		v := float64(smp.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		labels := map[string]string{}
		for k, lv := range smp.Metric {
			if k != model.MetricNameLabel {
				labels[string(k)] = string(lv)
			}
		}
		out = append(out, store.Sample{Labels: labels, Value: v, Timestamp: ts})
	}
	return out, nil
}
