// Package promsource gets metric values from Prometheus under the rules:
// discovery asks only for metric names and label names (never every
// series), and each fetch is one small query per metric and namespace —
// pods are filtered in the adapter, so the query does not grow with the
// number of pods (no 25 KB pod-name regexes). Everything a fetch or a
// discovery saw is kept in its result, so the adapter can explain a value
// or a missing metric from the same code that produced it.
package promsource

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/backend"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// Query kinds, as the backend metrics label them.
const (
	kindDiscovery = "discovery"
	kindCustom    = "custom"
	kindExternal  = "external"
	kindFreshness = "freshness"
)

// Source talks to one Prometheus.
type Source struct {
	api promv1.API
	url string
	obs *backend.Observer
	// Window is how far back discovery looks for series: a metric whose
	// series all stopped longer ago is no longer offered.
	Window time.Duration
	// Resolver turns the resources rules name into those the cluster
	// serves (default: the resources Kubernetes itself serves,
	// rules.BuiltinMapper).
	Resolver rules.Resolver
}

// New returns a source for the Prometheus the options name.
func New(o ClientOptions, m *backend.Metrics) (*Source, error) {
	hc, err := o.HTTPClient()
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(api.Config{Address: o.URL, Client: hc})
	if err != nil {
		return nil, fmt.Errorf("--prometheus-url %q: %w", o.URL, err)
	}
	if m == nil {
		m = backend.NewMetrics(nil)
	}
	return &Source{api: promv1.NewAPI(c), url: o.URL, obs: m.For("prometheus", kindDiscovery, kindCustom, kindFreshness, kindExternal),
		Window: 10 * time.Minute}, nil
}

// URL is the Prometheus this source asks.
func (s *Source) URL() string { return s.url }

// wrap names Prometheus and the query in a backend error, and says which
// flag to look at when the cause is the connection's security.
func (s *Source) wrap(what string, err error) error {
	return fmt.Errorf("prometheus at %s: %s: %w%s", s.url, what, err, hint(s.url, err.Error()))
}

// hint names the flag behind a failure to connect or authenticate.
func hint(url, msg string) string {
	tlsURL := strings.HasPrefix(url, "https://")
	switch {
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "failed to verify certificate"):
		return " (check --prometheus-ca-file: it must hold the CA that signed Prometheus' serving certificate)"
	case strings.Contains(msg, "certificate required") || strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority"):
		return " (Prometheus refused the client certificate: check --prometheus-client-tls-cert-file/--prometheus-client-tls-key-file)"
	case tlsURL && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset by peer") ||
		strings.Contains(msg, "http2: client conn could not be established")):
		// With TLS 1.3 a refused client certificate surfaces as the
		// server closing the connection after the handshake: a write that
		// fails, a reset, or — when the alert arrives while HTTP/2 reads
		// the server's preface — a connection HTTP/2 could not establish.
		return " (Prometheus closed the TLS connection: it may require a client certificate that is missing or not signed by a CA it trusts; check --prometheus-client-tls-cert-file/--prometheus-client-tls-key-file)"
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		return " (Prometheus speaks plain HTTP: use an http:// --prometheus-url)"
	case strings.Contains(msg, "401") || strings.Contains(msg, "Unauthorized"):
		return " (credentials refused: check --prometheus-token-file, --prometheus-auth-config or --prometheus-header)"
	case strings.Contains(msg, "403") || strings.Contains(msg, "Forbidden"):
		return " (the credentials may not query: check what the token or certificate is allowed to read)"
	}
	return ""
}

// Check runs a trivial query: Prometheus answers, with these credentials.
func (s *Source) Check(ctx context.Context) error {
	_, _, err := s.query(ctx, kindDiscovery, "vector(1)")
	return err
}

// Metric is one Kubernetes metric a rule yields from one series name.
type Metric struct {
	Name   string
	Series string
	Rule   *rules.Rule
	// Labels are the series' label names; Resources the Kubernetes
	// resources those labels name (custom metrics: what the metric can be
	// asked for on).
	Labels    []string
	Resources []schema.GroupResource
	// ResourceLabels is the label that names each served resource's
	// objects (the namespace's too, where the rule maps one): resolved at
	// discovery, so a query never resolves again.
	ResourceLabels map[schema.GroupResource]string
	// Unresolved says which of the rule's resources this cluster does
	// not serve, and what it serves instead.
	Unresolved []string
}

var namespaces = schema.GroupResource{Resource: "namespaces"}

// mapResources fills in what the metric's labels name under its rule.
func (m *Metric) mapResources(res rules.Resolver) {
	byResource, unresolved := m.Rule.MapLabels(m.Labels, res)
	if _, ok := byResource[namespaces]; !ok {
		// The namespace filter of a query needs the rule's namespace
		// label even where discovery's window saw none.
		if l, ok := m.Rule.LabelFor(namespaces, res); ok {
			byResource[namespaces] = l
		}
	}
	m.ResourceLabels, m.Unresolved, m.Resources = byResource, unresolved, nil
	if m.Rule.External {
		return
	}
	for gr, label := range byResource {
		if slices.Contains(m.Labels, label) { // the namespace label added above may not be
			m.Resources = append(m.Resources, gr)
		}
	}
	sort.Slice(m.Resources, func(i, j int) bool { return m.Resources[i].String() < m.Resources[j].String() })
}

// RuleDiscovery is what one rule found in Prometheus, kept whole so that
// a rule that yields nothing can say why.
type RuleDiscovery struct {
	Rule *rules.Rule
	// Err: Prometheus did not answer for this rule; the rest is empty.
	Err error
	// Series are the series names the rule's seriesQuery matched.
	Series []string
	// Filtered are the names its seriesFilters removed; Unnamed those
	// name.matches does not match.
	Filtered, Unnamed []string
	// Metrics are what the rule yields.
	Metrics []Metric
	// Unmapped are series of a custom rule none of whose labels names a
	// Kubernetes resource under the rule's overrides or template.
	Unmapped []Metric
}

func (s *Source) resolver() rules.Resolver {
	if s.Resolver == nil {
		return rules.MapperResolver(rules.BuiltinMapper())
	}
	return s.Resolver
}

// DiscoverRule asks Prometheus which series names the rule matches and
// which labels they carry.
func (s *Source) DiscoverRule(ctx context.Context, r *rules.Rule) RuleDiscovery {
	d := RuleDiscovery{Rule: r}
	end := time.Now()
	start := end.Add(-s.Window)
	t0 := time.Now()
	names, _, _, err := s.api.LabelValues(ctx, "__name__", []string{r.SeriesQuery}, start, end)
	s.obs.Observe(kindDiscovery, t0, err)
	if err != nil {
		d.Err = s.wrap("discovering rule "+r.Source+" (seriesQuery "+r.SeriesQuery+")", err)
		return d
	}
	sq, _ := rules.ParseSeriesQuery(r.SeriesQuery)
	for _, n := range names {
		series := string(n)
		d.Series = append(d.Series, series)
		if !r.Keeps(series) {
			d.Filtered = append(d.Filtered, series)
			continue
		}
		name, ok := r.Rename(series)
		if !ok {
			d.Unnamed = append(d.Unnamed, series)
			continue
		}
		m := Metric{Name: name, Series: series, Rule: r}
		match := rules.Selector(series, withoutName(sq.Matchers))
		t0 := time.Now()
		labels, _, _, err := s.api.LabelNames(ctx, []string{match}, start, end)
		s.obs.Observe(kindDiscovery, t0, err)
		if err != nil {
			d.Err = s.wrap("labels of "+series, err)
			return d
		}
		for _, l := range labels {
			m.Labels = append(m.Labels, string(l))
		}
		m.mapResources(s.resolver())
		if r.External {
			d.Metrics = append(d.Metrics, m)
			continue
		}
		if len(m.Resources) == 0 {
			d.Unmapped = append(d.Unmapped, m)
			continue
		}
		d.Metrics = append(d.Metrics, m)
	}
	return d
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
	s.obs.Observe(kind, t0, err)
	if err != nil {
		return nil, t0, s.wrap("query "+q, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, t0, fmt.Errorf("prometheus at %s: query %s returned %s, not an instant vector", s.url, q, v.Type())
	}
	return vec, t0, nil
}

// CustomQuery is what to fetch for a custom metric: a store query.
type CustomQuery struct {
	Metric    Metric
	Resource  schema.GroupResource // e.g. pods
	Namespace string               // "" for cluster-scoped resources
	// Object restricts the query to one object's series (the
	// namespaces resource asks per namespace); "" for all.
	Object string
	// Objects are the names asked about, for a rule whose query renders
	// them (<<.LabelValuesByName>>); otherwise empty: objects are picked
	// from the result, and one query serves every set of them.
	Objects  []string
	Selector []rules.Matcher // the request's metric selector
}

// Key identifies the query in the store.
func (q CustomQuery) Key() string {
	return strings.Join([]string{"custom", q.Metric.Name, q.Metric.Series, q.Resource.String(), q.Namespace, q.Object, rules.JoinMatchers(q.Selector), strings.Join(q.Objects, ",")}, "|")
}

// PromQL renders the rule's query for q, and the query of the newest raw
// sample behind each object (its timestamp is the value's).
func (q CustomQuery) PromQL() (query, freshness, groupBy string, err error) {
	r := q.Metric.Rule
	groupBy, ok := q.Metric.ResourceLabels[q.Resource]
	if !ok {
		return "", "", "", fmt.Errorf("rule %s does not map resource %s to a label", r.Source, q.Resource)
	}
	var ms []rules.Matcher
	if q.Namespace != "" {
		if nsLabel, ok := q.Metric.ResourceLabels[namespaces]; ok && nsLabel != groupBy {
			ms = append(ms, rules.Matcher{Label: nsLabel, Op: "=", Value: q.Namespace})
		}
	}
	if q.Object != "" {
		ms = append(ms, rules.Matcher{Label: groupBy, Op: "=", Value: q.Object})
	}
	if len(q.Objects) > 0 {
		// As prometheus-adapter: the names in the matchers too.
		ms = append(ms, objectsMatcher(groupBy, q.Objects))
	}
	ms = append(ms, q.Selector...)
	values := valuesByName(ms)
	matchers := rules.JoinMatchers(ms)
	query, err = r.Render(rules.QueryParts{
		Series: q.Metric.Series, LabelMatchers: matchers, GroupBy: rules.QuoteLabel(groupBy),
		GroupBySlice: []string{groupBy}, LabelValuesByName: values,
	})
	if err != nil {
		return "", "", "", err
	}
	freshness = fmt.Sprintf("max by (%s) (timestamp(%s))", rules.QuoteLabel(groupBy), rules.Selector(q.Metric.Series, ms))
	return query, freshness, groupBy, nil
}

// objectsMatcher selects the named objects: = for one, an anchored
// alternation of literals for more.
func objectsMatcher(label string, names []string) rules.Matcher {
	if len(names) == 1 {
		return rules.Matcher{Label: label, Op: "=", Value: names[0]}
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return rules.Matcher{Label: label, Op: "=~", Value: strings.Join(quoted, "|")}
}

// valuesByName is <<.LabelValuesByName>>: each matcher's label and its
// values as prometheus-adapter gives them, literal and joined by "|"
// ("bar|baz"; "a.b", not the matcher's "a\.b", which is no valid PromQL
// string text); a label matched twice keeps its first value. The
// adapter's regexp matchers only ever hold QuoteMeta'd literals (and
// Kubernetes names and label values hold no backslash), so dropping each
// escaping backslash gives the literals back exactly.
func valuesByName(ms []rules.Matcher) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		if _, ok := out[m.Label]; ok {
			continue
		}
		v := m.Value
		if strings.Contains(m.Op, "~") {
			v = unquoteMeta(v)
		}
		out[m.Label] = v
	}
	return out
}

func unquoteMeta(s string) string {
	var b strings.Builder
	esc := false
	for _, c := range s {
		if c == '\\' && !esc {
			esc = true
			continue
		}
		esc = false
		b.WriteRune(c)
	}
	return b.String()
}

// Series is one series a query returned.
type Series struct {
	Labels map[string]string
	Value  float64
	// Dropped says why the series did not count (NaN, no object label).
	Dropped string
}

// CustomResult is a custom metric fetch with everything behind it.
type CustomResult struct {
	Query, Freshness string
	GroupBy          string
	EvaluatedAt      time.Time
	Series           []Series
	// Samples: one per object, the sum of its series, stamped with its
	// newest raw sample.
	Samples []store.Sample
}

// QueryCustom runs q: one sample per object, the sum of the object's
// series (a rule without "sum by" yields one series per label set; the
// object's value is their total), stamped with its newest raw sample's
// time. NaN and infinite results are left out, never turned into 0; an
// object whose samples have no timestamp is left out too (it cannot be
// shown to be fresh).
func (s *Source) QueryCustom(ctx context.Context, q CustomQuery) (CustomResult, error) {
	var r CustomResult
	var err error
	r.Query, r.Freshness, r.GroupBy, err = q.PromQL()
	if err != nil {
		return r, err
	}
	vec, evalTime, err := s.query(ctx, kindCustom, r.Query)
	if err != nil {
		return r, err
	}
	r.EvaluatedAt = evalTime
	tv, _, err := s.query(ctx, kindFreshness, r.Freshness)
	if err != nil {
		return r, err
	}
	stamps := map[string]time.Time{}
	for _, smp := range tv {
		stamps[string(smp.Metric[model.LabelName(r.GroupBy)])] = unixTime(float64(smp.Value))
	}
	sums := map[string]float64{}
	for _, smp := range vec {
		sr := Series{Labels: labelMap(smp.Metric), Value: float64(smp.Value)}
		obj := string(smp.Metric[model.LabelName(r.GroupBy)])
		switch {
		case obj == "":
			sr.Dropped = "no " + r.GroupBy + " label: the query's result does not name an object"
		case math.IsNaN(sr.Value) || math.IsInf(sr.Value, 0):
			sr.Dropped = "not a number"
		default:
			sums[obj] += sr.Value
		}
		r.Series = append(r.Series, sr)
	}
	for obj, v := range sums {
		ts, ok := stamps[obj]
		if !ok {
			continue
		}
		r.Samples = append(r.Samples, store.Sample{Object: obj, Value: v, Timestamp: ts})
	}
	sort.Slice(r.Samples, func(i, j int) bool { return r.Samples[i].Object < r.Samples[j].Object })
	return r, nil
}

// ExternalQuery is what to fetch for an external metric: a store query.
type ExternalQuery struct {
	Metric    Metric
	Namespace string
	Selector  []rules.Matcher
}

// Key identifies the query in the store.
func (q ExternalQuery) Key() string {
	return strings.Join([]string{"external", q.Metric.Name, q.Metric.Series, q.Namespace, rules.JoinMatchers(q.Selector)}, "|")
}

// ExternalResult is an external metric fetch with everything behind it.
type ExternalResult struct {
	Query, Freshness string
	EvaluatedAt      time.Time
	Series           []Series
	Samples          []store.Sample
}

// PromQL renders the rule's query for q, and the query of the newest raw
// sample behind it (its timestamp is the values').
func (q ExternalQuery) PromQL() (query, freshness string, err error) {
	r := q.Metric.Rule
	ms := append([]rules.Matcher{}, q.Selector...)
	if r.Namespaced() && q.Namespace != "" {
		// The label the rule maps to namespaces (exported_namespace for a
		// series scraped from another namespace); "namespace" when the
		// rule maps none.
		nsLabel, ok := q.Metric.ResourceLabels[namespaces]
		if !ok {
			nsLabel = "namespace"
		}
		ms = append([]rules.Matcher{{Label: nsLabel, Op: "=", Value: q.Namespace}}, ms...)
	}
	var groupBy []string
	for _, m := range q.Selector {
		groupBy = append(groupBy, m.Label)
	}
	sort.Strings(groupBy)
	quoted := make([]string, len(groupBy))
	for i, g := range groupBy {
		quoted[i] = rules.QuoteLabel(g)
	}
	query, err = r.Render(rules.QueryParts{Series: q.Metric.Series, LabelMatchers: rules.JoinMatchers(ms),
		GroupBy: strings.Join(quoted, ","), GroupBySlice: groupBy, LabelValuesByName: valuesByName(ms)})
	if err != nil {
		return "", "", err
	}
	return query, fmt.Sprintf("max(timestamp(%s))", rules.Selector(q.Metric.Series, ms)), nil
}

// QueryExternal returns one sample per result series, labelled as in
// Prometheus, stamped with the newest raw sample of the metric's series.
func (s *Source) QueryExternal(ctx context.Context, q ExternalQuery) (ExternalResult, error) {
	var res ExternalResult
	var err error
	res.Query, res.Freshness, err = q.PromQL()
	if err != nil {
		return res, err
	}
	vec, evalTime, err := s.query(ctx, kindExternal, res.Query)
	if err != nil {
		return res, err
	}
	res.EvaluatedAt = evalTime
	tv, _, err := s.query(ctx, kindFreshness, res.Freshness)
	if err != nil {
		return res, err
	}
	if len(tv) != 1 {
		// No raw sample behind the result: nothing that can be shown to
		// be fresh.
		for _, smp := range vec {
			res.Series = append(res.Series, Series{Labels: labelMap(smp.Metric), Value: float64(smp.Value), Dropped: "no raw sample of " + q.Metric.Series + " to date it"})
		}
		return res, nil
	}
	ts := unixTime(float64(tv[0].Value))
	for _, smp := range vec {
		sr := Series{Labels: labelMap(smp.Metric), Value: float64(smp.Value)}
		if math.IsNaN(sr.Value) || math.IsInf(sr.Value, 0) {
			sr.Dropped = "not a number"
		} else {
			res.Samples = append(res.Samples, store.Sample{Labels: sr.Labels, Value: sr.Value, Timestamp: ts})
		}
		res.Series = append(res.Series, sr)
	}
	return res, nil
}

func labelMap(m model.Metric) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if k != model.MetricNameLabel {
			out[string(k)] = string(v)
		}
	}
	return out
}

// unixTime converts a PromQL timestamp() value (seconds) to a time,
// clamped to what a time.Time in nanoseconds holds.
func unixTime(sec float64) time.Time {
	const limit = float64(math.MaxInt64/int64(time.Second)) - 1
	if math.IsNaN(sec) || sec < -limit || sec > limit {
		return time.Time{}
	}
	whole, frac := math.Modf(sec)
	return time.Unix(int64(whole), int64(frac*1e9))
}
