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
	for _, f := range r.filters {
		if f.re.MatchString(series) != f.is {
			return "", false
		}
	}
	m := r.matches.FindStringSubmatchIndex(series)
	if m == nil {
		return "", false
	}
	return string(r.matches.ExpandString(nil, r.as, series, m)), true
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

// Render executes the rule's metricsQuery.
func (r *Rule) Render(qp QueryParts) (string, error) {
	var b bytes.Buffer
	if err := r.query.Execute(&b, qp); err != nil {
		return "", fmt.Errorf("rule %s: rendering metricsQuery: %w", r.Source, err)
	}
	return b.String(), nil
}
