package rules

import (
	"fmt"

	promlabels "github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// A team's rule (a MetricsRule in its namespace) reads only its own
// namespace: ScopeTo adds the namespace matcher to its series query, and
// every query it renders gets the matcher on every selector (Render), so
// neither discovery nor a value can read another namespace's series. A
// rule that names another namespace is refused.

// ScopeTo makes r a rule of namespace ns, or says why it cannot be one.
func (r *Rule) ScopeTo(ns string) error {
	sq, err := ParseSeriesQuery(r.SeriesQuery)
	if err != nil {
		return err
	}
	var ms []Matcher
	for _, m := range sq.Matchers {
		if m.Label != "namespace" {
			ms = append(ms, m)
			continue
		}
		if m.Op != "=" || m.Value != ns {
			return fmt.Errorf("seriesQuery %s: the matcher %s reaches beyond namespace %s: a rule in a namespace reads that namespace only (the adapter adds namespace=%q itself)", r.SeriesQuery, m, ns, ns)
		}
	}
	ms = append(ms, Matcher{"namespace", "=", ns})
	r.SeriesQuery = Selector(sq.Name, ms)
	r.Namespace = ns
	// The same text in two namespaces is two rules.
	r.Fingerprint += "@" + ns
	// The query is checked now, with placeholders filled, so a rule that
	// names another namespace is refused at once, not at its first use.
	_, err = r.Render(QueryParts{Series: "series", LabelMatchers: `pod="p"`, GroupBy: "pod", GroupBySlice: []string{"pod"},
		LabelValuesByName: map[string]string{"pod": "p", "namespace": ns}})
	return err
}

// scope adds namespace="ns" to every selector of q; a selector with
// another namespace matcher is an error.
func scope(q, ns string) (string, error) {
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(q)
	if err != nil {
		return "", fmt.Errorf("metricsQuery %s: %v", q, err)
	}
	var refused error
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok || refused != nil {
			return nil
		}
		var kept []*promlabels.Matcher
		for _, m := range vs.LabelMatchers {
			if m.Name != "namespace" {
				kept = append(kept, m)
				continue
			}
			if m.Type != promlabels.MatchEqual || m.Value != ns {
				refused = fmt.Errorf("metricsQuery: the selector %s reaches beyond namespace %s: a rule in a namespace reads that namespace only", vs, ns)
				return refused
			}
		}
		vs.LabelMatchers = append(kept, promlabels.MustNewMatcher(promlabels.MatchEqual, "namespace", ns))
		return nil
	})
	if refused != nil {
		return "", refused
	}
	return expr.String(), nil
}
