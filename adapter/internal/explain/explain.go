// Package explain answers "why" about the adapter: which series each rule
// found, what it named them, which labels mapped to which resources, and
// for a rule that yields nothing the reason in plain words; for one
// request, the PromQL as rendered, the series behind each object, the sum
// that becomes its value, each sample's age, and the answer the HPA would
// get. It reuses the code that serves the API (the Prometheus source, the
// catalog, the API's answer builders), so what it explains is what runs.
// `adapter explain` prints it offline; the debug endpoint prints it from
// the running adapter.
package explain

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	cmv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	"k8s.io/metrics/pkg/apis/external_metrics"
	emv1beta1 "k8s.io/metrics/pkg/apis/external_metrics/v1beta1"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/sources"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// Explainer explains from the parts of an adapter.
type Explainer struct {
	Catalog *catalog.Catalog
	Prom    *promsource.Source
	Kafka   *lag.Source // nil: no lag metrics
	API     *metricsapi.Provider
	// Store, when set (the running adapter), is shown: what it holds for
	// the request, and its age.
	Store *store.Store
	// Cluster says whether label selectors can be resolved to objects
	// (offline there is no cluster: every object Prometheus has a value
	// for is shown).
	Cluster bool
	Now     func() time.Time
}

func (e *Explainer) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// Rules writes, for each rule in use, what its last discovery found.
func (e *Explainer) Rules(w io.Writer) {
	ds := e.Catalog.Discoveries()
	if len(ds) == 0 {
		fmt.Fprintln(w, "The rules file has no rules and no externalRules: the adapter serves no Prometheus metrics.")
	}
	health := e.Catalog.Health()
	for i, d := range ds {
		if i > 0 {
			fmt.Fprintln(w)
		}
		Rule(w, d)
		if i < len(health) {
			e.ruleHealth(w, health[i])
		}
	}
}

// ruleHealth says when a rule last discovered, and whether it fails.
func (e *Explainer) ruleHealth(w io.Writer, h catalog.RuleHealth) {
	now := e.now()
	switch {
	case h.FailingSince.IsZero() && !h.LastSuccess.IsZero():
		fmt.Fprintf(w, "  health: discovered %s ago: %d series, %d metrics\n", now.Sub(h.LastSuccess).Round(time.Second), h.Series, h.Metrics)
	case h.Expired:
		fmt.Fprintf(w, "  health: FAILING since %s and past --rule-stale-after: its metrics answer 503 with this error: %v\n", h.FailingSince.UTC().Format(time.RFC3339), h.LastErr)
	case !h.FailingSince.IsZero():
		fmt.Fprintf(w, "  health: FAILING since %s (%v); serving what it found %s ago (%d metrics) until --rule-stale-after\n",
			h.FailingSince.UTC().Format(time.RFC3339), h.LastErr, now.Sub(h.LastSuccess).Round(time.Second), h.Metrics)
	}
}

// Rule writes one rule's discovery and, when it yields nothing, why.
func Rule(w io.Writer, d promsource.RuleDiscovery) {
	r := d.Rule
	kind := "rule"
	if r.External {
		kind = "external rule"
	}
	fmt.Fprintf(w, "%s %s\n", kind, r.Source)
	fmt.Fprintf(w, "  seriesQuery:  %s\n", r.SeriesQuery)
	fmt.Fprintf(w, "  name:         matches %q as %q\n", r.NameMatches(), r.As())
	if !r.External {
		res := strings.Join(r.Overrides(), ", ")
		if t := r.Template(); t != "" {
			res = strings.TrimPrefix(res+", template "+t, ", ")
		}
		fmt.Fprintf(w, "  resources:    %s\n", res)
	}
	fmt.Fprintf(w, "  metricsQuery: %s\n", r.QueryText)
	if d.Err != nil {
		fmt.Fprintf(w, "  YIELDS NOTHING: Prometheus did not answer for this rule: %v\n", d.Err)
		return
	}
	fmt.Fprintf(w, "  series names matched: %d%s\n", len(d.Series), examples(d.Series, 5))
	if len(d.Filtered) > 0 {
		fmt.Fprintf(w, "  removed by seriesFilters: %d%s\n", len(d.Filtered), examples(d.Filtered, 5))
	}
	if len(d.Unnamed) > 0 {
		fmt.Fprintf(w, "  not matched by name.matches %q: %d%s\n", r.NameMatches(), len(d.Unnamed), examples(d.Unnamed, 5))
	}
	for _, m := range d.Metrics {
		fmt.Fprintf(w, "  %s → %s\n", m.Series, m.Name)
		if !r.External {
			mapped, unmapped := mapping(m)
			fmt.Fprintf(w, "    labels mapped to resources: %s\n", orNone(mapped))
			fmt.Fprintf(w, "    labels not mapped:          %s\n", orNone(unmapped))
			fmt.Fprintf(w, "    served on:                  %s\n", resources(m.Resources))
		}
		for _, u := range m.Unresolved {
			fmt.Fprintf(w, "    NOT SERVED: %s\n", u)
		}
		if q, err := sampleQuery(m); err != nil {
			fmt.Fprintf(w, "    TEMPLATE ERROR: %v\n", err)
		} else {
			fmt.Fprintf(w, "    query, e.g.:                %s\n", q)
		}
	}
	for _, m := range d.Unmapped {
		_, unmapped := mapping(m)
		fmt.Fprintf(w, "  %s → %s: no label names a Kubernetes resource this cluster serves (its labels: %s)\n", m.Series, m.Name, orNone(unmapped))
		for _, u := range m.Unresolved {
			fmt.Fprintf(w, "    NOT SERVED: %s\n", u)
		}
	}
	if reason := whyNothing(d); reason != "" {
		fmt.Fprintf(w, "  YIELDS NOTHING: %s\n", reason)
	}
}

// whyNothing says in plain words why a rule yields no metric ("" when it
// yields some).
func whyNothing(d promsource.RuleDiscovery) string {
	r := d.Rule
	if len(d.Metrics) > 0 {
		return ""
	}
	switch {
	case len(d.Series) == 0:
		return fmt.Sprintf("no series in Prometheus matches the seriesQuery %s in the last discovery window (is the target scraped, and are its labels as written?)", r.SeriesQuery)
	case len(d.Filtered) == len(d.Series):
		return fmt.Sprintf("seriesFilters removed every series the seriesQuery matched (%s)", strings.Join(d.Filtered, ", "))
	case len(d.Unnamed) > 0 && len(d.Unmapped) == 0:
		return fmt.Sprintf("name.matches %q matches none of the names it saw: %s", r.NameMatches(), strings.Join(d.Unnamed, ", "))
	case len(d.Unmapped) > 0:
		return fmt.Sprintf("no label of its series maps to a Kubernetes resource: resources.overrides map %s; add an override for the label that names the pod or namespace",
			orNone(strings.Join(r.Overrides(), ", ")))
	}
	return "every series was filtered out or not renamed"
}

// mapping lists which of a metric's labels name a served resource (as
// discovery resolved them) and which do not.
func mapping(m promsource.Metric) (mapped, unmapped string) {
	byLabel := map[string]schema.GroupResource{}
	for _, gr := range m.Resources {
		byLabel[m.ResourceLabels[gr]] = gr
	}
	var ms, u []string
	for _, l := range m.Labels {
		if l == "__name__" {
			continue
		}
		if gr, ok := byLabel[l]; ok {
			ms = append(ms, l+" → "+gr.String())
		} else {
			u = append(u, l)
		}
	}
	return strings.Join(ms, ", "), strings.Join(u, ", ")
}

// sampleQuery renders the rule's query as it would run for its first
// resource in namespace "<namespace>", catching template errors that only
// show with real values.
func sampleQuery(m promsource.Metric) (string, error) {
	if m.Rule.External {
		return m.Rule.Render(rules.QueryParts{Series: m.Series, LabelMatchers: `namespace="<namespace>"`})
	}
	if len(m.Resources) == 0 {
		return "", nil
	}
	gr := m.Resources[len(m.Resources)-1]
	q := promsource.CustomQuery{Metric: m, Resource: gr, Namespace: "<namespace>"}
	query, _, _, err := q.PromQL()
	return query, err
}

func resources(grs []schema.GroupResource) string {
	var out []string
	for _, gr := range grs {
		out = append(out, gr.String())
	}
	return orNone(strings.Join(out, ", "))
}

func examples(xs []string, n int) string {
	if len(xs) == 0 {
		return ""
	}
	s := append([]string(nil), xs...)
	sort.Strings(s)
	more := ""
	if len(s) > n {
		more = fmt.Sprintf(", … %d more", len(s)-n)
		s = s[:n]
	}
	return " (" + strings.Join(s, ", ") + more + ")"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Request is one metric request to explain.
type Request struct {
	Namespace string
	// Resource is a group-resource such as pods; empty for an external
	// metric.
	Resource string
	Metric   string
	// Name asks for one object; Selector for the objects a label selector
	// matches (with a cluster).
	Name, Selector string
	// MetricSelector narrows the series (an HPA's metric.selector).
	MetricSelector string
}

// Explain writes how the request is answered.
func (e *Explainer) Explain(ctx context.Context, w io.Writer, req Request) error {
	msel, err := labels.Parse(req.MetricSelector)
	if err != nil {
		return fmt.Errorf("--metric-selector: %w", err)
	}
	if req.Resource == "" {
		return e.external(ctx, w, req, msel)
	}
	return e.custom(ctx, w, req, msel)
}

func (e *Explainer) custom(ctx context.Context, w io.Writer, req Request, msel labels.Selector) error {
	gr := schema.ParseGroupResource(req.Resource)
	fmt.Fprintf(w, "custom metric %s on %s in namespace %q\n", req.Metric, gr, req.Namespace)
	m, ok := e.Catalog.Custom(req.Namespace, req.Metric, gr)
	if !ok {
		e.unknownCustom(w, req.Namespace, req.Metric, gr)
		return nil
	}
	fmt.Fprintf(w, "  served by rule %s from series %s\n", m.Rule.Source, m.Series)
	info := cmprovider.CustomMetricInfo{GroupResource: gr, Namespaced: !(gr.Group == "" && gr.Resource == "namespaces"), Metric: req.Metric}
	var names []string
	switch {
	case req.Name != "":
		names = []string{req.Name}
	case e.Cluster:
		sel, err := labels.Parse(req.Selector)
		if err != nil {
			return fmt.Errorf("--selector: %w", err)
		}
		names, err = e.API.Objects(ctx, req.Namespace, info, sel)
		if err != nil {
			fmt.Fprintf(w, "  objects: %v\n", err)
			return nil
		}
		fmt.Fprintf(w, "  objects matching %q: %d (%s)\n", req.Selector, len(names), strings.Join(first(names, 10), ", "))
	default:
		fmt.Fprintln(w, "  objects: no cluster to resolve a selector; every object Prometheus has a value for is shown")
	}
	q, err := e.API.CustomQuery(ctx, req.Namespace, info, msel, names)
	if err != nil {
		fmt.Fprintf(w, "  %v\n", err)
		return nil
	}
	res, err := e.Prom.QueryCustom(ctx, q)
	fmt.Fprintf(w, "  PromQL:    %s\n", res.Query)
	fmt.Fprintf(w, "  freshness: %s\n", res.Freshness)
	if err != nil {
		fmt.Fprintf(w, "  ERROR: %v\n", err)
		return nil
	}
	fmt.Fprintf(w, "  series returned: %d (each object's value is the sum of its series, grouped by the %q label)\n", len(res.Series), res.GroupBy)
	byObj := map[string][]promsource.Series{}
	for _, s := range res.Series {
		byObj[s.Labels[res.GroupBy]] = append(byObj[s.Labels[res.GroupBy]], s)
	}
	if names == nil {
		for _, s := range res.Samples {
			names = append(names, s.Object)
		}
	}
	v := store.Value{Samples: res.Samples, FetchedAt: e.now()}
	read := e.API.Split(req.Metric, v)
	stale := map[string]bool{}
	for _, s := range read.Stale {
		stale[s.Object] = true
	}
	for _, obj := range sortedKeys(byObj) {
		fmt.Fprintf(w, "  %s:\n", orNone(obj))
		for _, s := range byObj[obj] {
			drop := ""
			if s.Dropped != "" {
				drop = "   (not counted: " + s.Dropped + ")"
			}
			fmt.Fprintf(w, "    %s = %g%s\n", labelString(s.Labels, res.GroupBy), s.Value, drop)
		}
		for _, smp := range res.Samples {
			if smp.Object != obj {
				continue
			}
			state := "served"
			if stale[obj] {
				state = "NOT SERVED: older than --max-sample-age"
				if smp.Timestamp.IsZero() {
					state = "NOT SERVED: no raw sample to date it"
				}
			}
			qv := metricsapi.Quantity(smp.Value)
			fmt.Fprintf(w, "    value %s (sum), newest raw sample %s old: %s\n", qv.String(), e.now().Sub(smp.Timestamp).Round(time.Millisecond), state)
		}
		if !contains(names, obj) && obj != "" {
			fmt.Fprintln(w, "    not asked for: the request's objects do not include it")
		}
	}
	e.stored(w, q)
	list, err := e.API.CustomList(req.Namespace, info, msel, names, read)
	return answer(w, list, err)
}

func (e *Explainer) external(ctx context.Context, w io.Writer, req Request, msel labels.Selector) error {
	fmt.Fprintf(w, "external metric %s in namespace %q, selector %q\n", req.Metric, req.Namespace, msel.String())
	q, err := e.API.ExternalQuery(ctx, req.Namespace, msel, req.Metric)
	if err != nil {
		fmt.Fprintf(w, "  %v\n", err)
		e.wouldServe(w, req.Metric, true)
		return nil
	}
	var samples []store.Sample
	switch q := q.(type) {
	case lag.Query:
		samples, err = e.lag(ctx, w, q)
	case promsource.ExternalQuery:
		fmt.Fprintf(w, "  served by external rule %s from series %s\n", q.Metric.Rule.Source, q.Metric.Series)
		var res promsource.ExternalResult
		res, err = e.Prom.QueryExternal(ctx, q)
		fmt.Fprintf(w, "  PromQL:    %s\n  freshness: %s\n", res.Query, res.Freshness)
		for _, s := range res.Series {
			drop := ""
			if s.Dropped != "" {
				drop = "   (not counted: " + s.Dropped + ")"
			}
			fmt.Fprintf(w, "    %s = %g%s\n", labelString(s.Labels, ""), s.Value, drop)
		}
		samples = res.Samples
	}
	if err != nil {
		fmt.Fprintf(w, "  ERROR: %v\n", err)
		return nil
	}
	e.stored(w, q)
	read := e.API.Split(req.Metric, store.Value{Samples: samples, FetchedAt: e.now()})
	list, err := e.API.ExternalList(req.Metric, msel, read)
	return answer(w, list, err)
}

// lag explains a lag query partition by partition: the offsets read and
// the case of the lag table that applied.
func (e *Explainer) lag(ctx context.Context, w io.Writer, q lag.Query) ([]store.Sample, error) {
	if e.Kafka == nil {
		return nil, sources.ErrLagOff
	}
	for _, g := range q.Groups {
		parts, err := e.Kafka.GroupPartitions(ctx, g, q.Topics)
		if err != nil {
			return nil, &lag.Error{Group: g, Cause: err}
		}
		fmt.Fprintf(w, "  consumer group %s\n", g)
		fmt.Fprintf(w, "    %-24s %9s %12s %12s %12s %9s  %s\n", "topic[partition]", "start", "end", "committed", "lag", "", "case")
		for _, pl := range lag.Calculate(parts) {
			c := fmt.Sprint(pl.Committed)
			if pl.Committed == lag.NoOffset {
				c = "none"
			}
			fmt.Fprintf(w, "    %-24s %9d %12d %12s %12d %9s  %s\n", fmt.Sprintf("%s[%d]", pl.Topic, pl.Partition.Partition), pl.Start, pl.End, c, pl.Lag, "", pl.Reason)
		}
	}
	// Read-only: the HPA path's consumption history and "as last served"
	// gauges are not touched by explaining.
	return e.Kafka.Peek(ctx, q)
}

// stored shows what the running adapter's store holds for q.
func (e *Explainer) stored(w io.Writer, q store.Query) {
	if e.Store == nil {
		return
	}
	v, ok := e.Store.Peek(q)
	if !ok {
		fmt.Fprintln(w, "  store: nothing kept for this query yet (the first HPA request fetches it)")
		return
	}
	if v.Err != nil {
		fmt.Fprintf(w, "  store: last fetch %s ago failed: %v\n", e.now().Sub(v.FetchedAt).Round(time.Millisecond), v.Err)
		return
	}
	fmt.Fprintf(w, "  store: %d samples, fetched %s ago (the HPA is answered from these)\n", len(v.Samples), e.now().Sub(v.FetchedAt).Round(time.Millisecond))
}

// answer prints what the HPA would receive, as the API serves it
// (custom metrics v1beta2, external metrics v1beta1).
func answer(w io.Writer, list any, err error) error {
	if err != nil {
		fmt.Fprintf(w, "  the HPA gets an error: %v\n", err)
		return nil
	}
	var out any
	switch l := list.(type) {
	case *custom_metrics.MetricValueList:
		v := &cmv1beta2.MetricValueList{}
		err = cmv1beta2.Convert_custom_metrics_MetricValueList_To_v1beta2_MetricValueList(l, v, nil)
		v.Kind, v.APIVersion = "MetricValueList", cmv1beta2.SchemeGroupVersion.String()
		out = v
	case *external_metrics.ExternalMetricValueList:
		v := &emv1beta1.ExternalMetricValueList{}
		err = emv1beta1.Convert_external_metrics_ExternalMetricValueList_To_v1beta1_ExternalMetricValueList(l, v, nil)
		v.Kind, v.APIVersion = "ExternalMetricValueList", emv1beta1.SchemeGroupVersion.String()
		out = v
	}
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(out, "  ", "  ")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  the HPA gets:\n  %s\n", b)
	return nil
}

// unknownCustom explains a metric no rule yields on the resource: the
// nearest names, and a rule that serves a series of that name.
func (e *Explainer) unknownCustom(w io.Writer, ns, metric string, gr schema.GroupResource) {
	fmt.Fprintf(w, "  NOT SERVED: %v\n", e.Catalog.NotServed(ns, metric, gr))
	e.wouldServe(w, metric, false)
	for _, d := range e.Catalog.Discoveries() {
		for _, m := range append(append([]promsource.Metric{}, d.Metrics...), d.Unmapped...) {
			if m.Series == metric {
				fmt.Fprintf(w, "  %s is a series that rule %s turns into %s\n", metric, d.Rule.Source, m.Name)
			}
		}
	}
}

func labelString(l map[string]string, first string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if (keys[i] == first) != (keys[j] == first) {
			return keys[i] == first
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, l[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func first(xs []string, n int) []string {
	if len(xs) > n {
		return append(append([]string(nil), xs[:n]...), "…")
	}
	return xs
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// wouldServe names the rules that could yield metric by their series query
// and name (a rule naming one series names one metric), with their state:
// the rule that would serve it, had it found the series.
func (e *Explainer) wouldServe(w io.Writer, metric string, external bool) {
	if e.Catalog == nil {
		return
	}
	for _, h := range e.Catalog.Health() {
		r := h.Rule
		if r.External != external || !r.MayYield(metric) {
			continue
		}
		state := "its last discovery found no series it turns into " + metric
		if !h.FailingSince.IsZero() {
			state = fmt.Sprintf("its discovery fails: %v", h.LastErr)
		}
		fmt.Fprintf(w, "  rule %s (seriesQuery %s) would serve it: %s\n", r.Source, r.SeriesQuery, state)
	}
}
