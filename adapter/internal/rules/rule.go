package rules

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// MetricName is the Kubernetes metric a series becomes under this rule, or
// false when the rule's seriesFilters or name.matches exclude it.
func (r *Rule) MetricName(series string) (string, bool) {
	if !r.Keeps(series) {
		return "", false
	}
	return r.Rename(series)
}

// Keeps reports whether the rule's seriesFilters let the series through.
func (r *Rule) Keeps(series string) bool {
	for _, f := range r.filters {
		if f.re.MatchString(series) != f.is {
			return false
		}
	}
	return true
}

// Rename applies name.matches and name.as, or reports that matches does
// not match the series.
func (r *Rule) Rename(series string) (string, bool) {
	m := r.matches.FindStringSubmatchIndex(series)
	if m == nil {
		return "", false
	}
	return string(r.matches.ExpandString(nil, r.as, series, m)), true
}

// NameMatches is the rule's name.matches expression.
func (r *Rule) NameMatches() string { return r.matches.String() }

// As is the rule's name.as (its default filled in).
func (r *Rule) As() string { return r.as }

// Overrides lists the rule's label → resource overrides, sorted by label.
func (r *Rule) Overrides() []string {
	var out []string
	for l, gr := range r.overrides {
		out = append(out, l+" → "+gr.String())
	}
	sort.Strings(out)
	return out
}

// Template is the rule's resources template, if any.
func (r *Rule) Template() string {
	if r.template == nil {
		return ""
	}
	return r.templateText
}

// Namespaced reports whether the rule's metrics live in a namespace
// (external rules may say they do not).
func (r *Rule) Namespaced() bool { return r.namespaced }

// SameResource compares resources the way the API does, ignoring plural
// and case: "pod" and "pods" are one resource.
func SameResource(a, b schema.GroupResource) bool {
	norm := func(s string) string { return strings.TrimSuffix(strings.ToLower(s), "s") }
	return a.Group == b.Group && norm(a.Resource) == norm(b.Resource)
}

// LabelFor is the series label that names objects of resource gr.
func (r *Rule) LabelFor(gr schema.GroupResource) (string, bool) {
	for label, o := range r.overrides {
		if SameResource(o, gr) {
			return label, true
		}
	}
	if r.template == nil {
		return "", false
	}
	singular := strings.TrimSuffix(gr.Resource, "s")
	var b bytes.Buffer
	if err := r.template.Execute(&b, struct{ Group, Resource string }{gr.Group, singular}); err != nil {
		return "", false
	}
	return b.String(), true
}

// ResourceFor is the resource a series label names, if any.
func (r *Rule) ResourceFor(label string) (schema.GroupResource, bool) {
	if gr, ok := r.overrides[label]; ok {
		return gr, true
	}
	if r.templateRE == nil {
		return schema.GroupResource{}, false
	}
	m := r.templateRE.FindStringSubmatch(label)
	if m == nil {
		return schema.GroupResource{}, false
	}
	gr := schema.GroupResource{}
	for i, name := range r.templateRE.SubexpNames() {
		switch name {
		case "group":
			gr.Group = m[i]
		case "resource":
			gr.Resource = m[i]
		}
	}
	return gr, gr.Resource != ""
}

// Resources lists the resources a series with these labels can be
// attached to.
func (r *Rule) Resources(labels []string) []schema.GroupResource {
	var out []schema.GroupResource
	for _, l := range labels {
		if gr, ok := r.ResourceFor(l); ok {
			out = append(out, gr)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// QueryParts are the values a metricsQuery template sees, with
// prometheus-adapter's names.
type QueryParts struct {
	Series            string
	LabelMatchers     string // namespace="ns",pod="p" ...
	GroupBy           string // pod
	GroupBySlice      []string
	LabelValuesByName map[string][]string
}

// seriesToken stands for the series name while the template runs, so a
// name that is not a legacy PromQL identifier (Prometheus 3 allows UTF-8
// names such as http.server.requests) can be written the way PromQL wants
// it: inside the braces, quoted.
const seriesToken = "__purchase_system_series__"

// Render executes the rule's metricsQuery.
func (r *Rule) Render(qp QueryParts) (string, error) {
	series := qp.Series
	legacy := IsLegacyName(series)
	if !legacy {
		qp.Series = seriesToken
	}
	var b bytes.Buffer
	if err := r.query.Execute(&b, qp); err != nil {
		return "", fmt.Errorf("rule %s: rendering metricsQuery: %w", r.Source, err)
	}
	out := b.String()
	if !legacy {
		q := Quote(series)
		out = strings.ReplaceAll(out, seriesToken+"{}", "{"+q+"}")
		out = strings.ReplaceAll(out, seriesToken+"{", "{"+q+",")
		out = strings.ReplaceAll(out, seriesToken, "{"+q+"}")
	}
	return out, nil
}
