package promsource_test

import (
	"regexp"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"

	promlabels "github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// fuzzRules has a custom rule (the seed's) and an external rule whose
// queries aggregate, so the fuzzer's text lands in templates both inside
// braces and in a by() clause.
const fuzzRules = `
rules:
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: "namespace"}
        pod: {resource: "pod"}
    name: {matches: "^(.*)_total$", as: "${1}_per_second"}
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
externalRules:
  - seriesQuery: 'queue_depth{namespace!=""}'
    resources: {namespaced: true}
    metricsQuery: 'sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})'
`

var ops = []string{"=", "!=", "=~", "!~"}

var promTypes = map[string]promlabels.MatchType{
	"=": promlabels.MatchEqual, "!=": promlabels.MatchNotEqual,
	"=~": promlabels.MatchRegexp, "!~": promlabels.MatchNotRegexp,
}

// FuzzSelectorStaysInsideItsMatchers renders the queries for a request
// whose series name, namespace, object name and metric selector come from
// the fuzzer, parses them with Prometheus's own parser, and checks that
// every vector selector in them selects exactly the series it was asked
// to, by exactly the matchers it was given: no text of a request can end
// a string, add a matcher, or change the query around it.
func FuzzSelectorStaysInsideItsMatchers(f *testing.F) {
	for _, s := range []struct {
		series, ns, obj, sel, label, value string
		op                                 uint8
	}{
		{"flask_http_request_total", "purchase-system", "web-0", "", "", "", 0},
		{"flask_http_request_total", "ns", "", "app.kubernetes.io/name=web,tier in (a,b)", "", "", 0},
		{"http.server.requests", "ns", "p", "!canary", "app.kubernetes.io/name", `a"b\`, 2},
		{"flask_http_request_total", `x"}or vector(1)#`, `"} or on() vector(9e9) #`, "", `x"}`, `.*`, 3},
		{"queue_depth", "ns", "", "queue notin (x)", "label", "\\\"\n", 1},
		{"ü", "", "", "a=b", "\u00e9", "\u2028", 0},
	} {
		f.Add(s.series, s.ns, s.obj, s.sel, s.label, s.value, s.op)
	}
	cfg, err := rules.Parse("fuzz.yaml", []byte(fuzzRules))
	if err != nil {
		f.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	f.Fuzz(func(t *testing.T, series, ns, obj, sel, label, value string, op uint8) {
		// What Prometheus can hold: valid UTF-8 names, and values (the
		// adapter answers the rest with an error before querying).
		if series == "" || !utf8.ValidString(series) || !utf8.ValidString(ns) || !utf8.ValidString(obj) ||
			!utf8.ValidString(label) || !utf8.ValidString(value) {
			return
		}
		var ms []rules.Matcher
		if parsed, err := labels.Parse(sel); err == nil {
			if ms, err = rules.SelectorMatchers(parsed); err != nil {
				ms = nil
			}
		}
		if label != "" {
			// Any label name and value, as the adapter writes them: regexp
			// operators only ever carry quoted literals (an In list).
			m := rules.Matcher{Label: label, Op: ops[int(op)%len(ops)], Value: value}
			if strings.Contains(m.Op, "~") {
				m.Value = regexp.QuoteMeta(value)
			}
			ms = append(ms, m)
		}

		custom := promsource.CustomQuery{
			Metric: promsource.Metric{Name: "m", Series: series, Rule: cfg.Rules[0], ResourceLabels: map[schema.GroupResource]string{
				{Resource: "pods"}: "pod", {Resource: "namespaces"}: "namespace"}},
			Resource:  schema.GroupResource{Resource: "pods"},
			Namespace: ns, Object: obj, Selector: ms,
		}
		want := []rules.Matcher{{Label: "__name__", Op: "=", Value: series}}
		if ns != "" {
			want = append(want, rules.Matcher{Label: "namespace", Op: "=", Value: ns})
		}
		if obj != "" {
			want = append(want, rules.Matcher{Label: "pod", Op: "=", Value: obj})
		}
		want = append(want, ms...)
		query, freshness, _, err := custom.PromQL()
		if err != nil {
			t.Fatalf("rendering: %v", err)
		}
		checkSelectors(t, p, query, want, 1)
		checkSelectors(t, p, freshness, want, 1)

		external := promsource.ExternalQuery{
			Metric:    promsource.Metric{Name: "m", Series: series, Rule: cfg.ExternalRules[0]},
			Namespace: ns, Selector: ms,
		}
		want = []rules.Matcher{{Label: "__name__", Op: "=", Value: series}}
		if ns != "" {
			want = append(want, rules.Matcher{Label: "namespace", Op: "=", Value: ns})
		}
		want = append(want, ms...)
		query, freshness, err = external.PromQL()
		if err != nil {
			t.Fatalf("rendering: %v", err)
		}
		checkSelectors(t, p, query, want, 1)
		checkSelectors(t, p, freshness, want, 1)
	})
}

// checkSelectors parses query and checks it has n vector selectors, each
// with exactly the matchers in want.
func checkSelectors(t *testing.T, p parser.Parser, query string, want []rules.Matcher, n int) {
	t.Helper()
	expr, err := p.ParseExpr(query)
	if err != nil {
		t.Fatalf("Prometheus cannot parse the rendered query %s: %v", query, err)
	}
	var got [][]string
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			var ms []string
			for _, m := range vs.LabelMatchers {
				ms = append(ms, m.Name+"\x00"+m.Type.String()+"\x00"+m.Value)
			}
			sort.Strings(ms)
			got = append(got, ms)
		}
		return nil
	})
	var exp []string
	for _, m := range want {
		exp = append(exp, m.Label+"\x00"+promTypes[m.Op].String()+"\x00"+m.Value)
	}
	sort.Strings(exp)
	if len(got) != n {
		t.Fatalf("%s has %d vector selectors, want %d", query, len(got), n)
	}
	for _, g := range got {
		if strings.Join(g, "\x01") != strings.Join(exp, "\x01") {
			t.Fatalf("%s selects by %q, want %q", query, g, exp)
		}
	}
}
