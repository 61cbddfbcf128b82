package rules

import (
	"bytes"
	"fmt"
	"slices"
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
// and case: "pod" and "pods" are one resource (for suggestions in
// messages; serving compares resolved resources).
func SameResource(a, b schema.GroupResource) bool {
	norm := func(s string) string { return strings.TrimSuffix(strings.ToLower(s), "s") }
	return a.Group == b.Group && norm(a.Resource) == norm(b.Resource)
}

// templateResources are the groups and resources the template may
// describe in a label name, as written there (not resolved).
func (r *Rule) templateResources(label string) []schema.GroupResource {
	var out []schema.GroupResource
	for _, re := range r.templateRE {
		m := re.FindStringSubmatch(label)
		if m == nil {
			continue
		}
		gr := schema.GroupResource{}
		for i, name := range re.SubexpNames() {
			switch name {
			case "group":
				gr.Group = m[i]
			case "resource":
				gr.Resource = m[i]
			}
		}
		if gr.Resource != "" && !slices.Contains(out, gr) {
			out = append(out, gr)
		}
	}
	return out
}

// QueryParts are the values a metricsQuery template sees, with
// prometheus-adapter's names.
type QueryParts struct {
	Series        string
	LabelMatchers string // namespace="ns",pod="p" ...
	GroupBy       string // pod
	GroupBySlice  []string
	// LabelValuesByName: label → its values joined by "|", as in
	// prometheus-adapter (pod → "bar|baz"). Names of objects are here
	// only for rules whose query uses it (UsesLabelValues).
	LabelValuesByName map[string]string
}

// UsesLabelValues reports whether the rule's query reads
// <<.LabelValuesByName>>: only then is a query rendered per set of
// objects, with their names; the other rules' queries stay the same size
// at any number of pods.
func (r *Rule) UsesLabelValues() bool { return strings.Contains(r.QueryText, ".LabelValuesByName") }

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
	out := tidyMatchers(b.String())
	if !legacy {
		q := Quote(series)
		out = strings.ReplaceAll(out, seriesToken+"{}", "{"+q+"}")
		out = strings.ReplaceAll(out, seriesToken+"{", "{"+q+",")
		out = strings.ReplaceAll(out, seriesToken, "{"+q+"}")
	}
	if r.Namespace != "" {
		return scope(out, r.Namespace)
	}
	return out, nil
}

// tidyMatchers drops the commas an empty <<.LabelMatchers>> leaves in a
// selector ({,mode!="idle"} → {mode!="idle"}), which Prometheus rejects:
// a cluster-scoped resource, or an external rule across namespaces,
// without a metric selector has no matchers. Text in string literals is
// left alone.
func tidyMatchers(q string) string {
	var b strings.Builder
	var quote rune
	var last rune // the last character written that is not a space
	esc := false
	next := func(i int) byte { // the next byte after i that is not a space
		for j := i + 1; j < len(q); j++ {
			if q[j] != ' ' && q[j] != '\t' {
				return q[j]
			}
		}
		return 0
	}
	for i, c := range q {
		switch {
		case quote != 0:
			switch {
			case esc:
				esc = false
			case c == '\\' && quote != '`':
				esc = true
			case c == quote:
				quote = 0
			}
		case c == '"' || c == '\'' || c == '`':
			quote = c
		case c == ',':
			if last == '{' || last == ',' || next(i) == '}' {
				continue
			}
		}
		b.WriteRune(c)
		if c != ' ' && c != '\t' {
			last = c
		}
	}
	return b.String()
}

// MayYield reports whether the rule could serve a metric called name: false
// only when its series query names one series (name{...} or
// {__name__="..."}) whose renaming is not name. A rule matching series by
// pattern may yield any name.
func (r *Rule) MayYield(name string) bool {
	sq, err := ParseSeriesQuery(r.SeriesQuery)
	if err != nil {
		return true
	}
	series := sq.Name
	for _, m := range sq.Matchers {
		if m.Label == "__name__" && m.Op == "=" {
			series = m.Value
		}
	}
	if series == "" {
		return true
	}
	got, ok := r.Rename(series)
	return ok && got == name
}
