package rules_test

import (
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

func teamRule(t *testing.T, seriesQuery, metricsQuery string) *rules.Rule {
	t.Helper()
	cfg, err := rules.Parse("MetricsRule team-a/r", []byte(`rules:
- seriesQuery: '`+seriesQuery+`'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  metricsQuery: '`+metricsQuery+`'
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Rules[0]
}

// Every selector of every query a team's rule renders reads its
// namespace only: the one its template names, and any other it writes.
func TestATeamRuleReadsItsNamespaceOnly(t *testing.T) {
	r := teamRule(t, `jobs_queued{pod!=""}`, `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>) / scalar(count(up{job="x"}))`)
	if err := r.ScopeTo("team-a"); err != nil {
		t.Fatal(err)
	}
	if r.SeriesQuery != `{__name__="jobs_queued",pod!="",namespace="team-a"}` && r.SeriesQuery != `jobs_queued{pod!="",namespace="team-a"}` {
		t.Errorf("seriesQuery %s: want the namespace matcher added", r.SeriesQuery)
	}
	q, err := r.Render(rules.QueryParts{Series: "jobs_queued", LabelMatchers: `pod=~"a|b"`, GroupBy: "pod"})
	if err != nil {
		t.Fatal(err)
	}
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(q)
	if err != nil {
		t.Fatalf("rendered %s: %v", q, err)
	}
	n := 0
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			n++
			if !strings.Contains(vs.String(), `namespace="team-a"`) {
				t.Errorf("selector %s of %s reads beyond team-a", vs, q)
			}
		}
		return nil
	})
	if n != 2 {
		t.Errorf("%d selectors in %s, want 2", n, q)
	}
}

// A rule that names another namespace is refused, in either query.
func TestATeamRuleNamingAnotherNamespaceIsRefused(t *testing.T) {
	for _, c := range []struct{ series, query string }{
		{`jobs_queued{namespace="team-b",pod!=""}`, `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)`},
		{`jobs_queued{namespace=~"team-.*",pod!=""}`, `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)`},
		{`jobs_queued{pod!=""}`, `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>) + sum(jobs_queued{namespace="team-b"})`},
		{`jobs_queued{pod!=""}`, `sum(<<.Series>>{<<.LabelMatchers>>,namespace!="team-a"}) by (<<.GroupBy>>)`},
	} {
		r := teamRule(t, c.series, c.query)
		if err := r.ScopeTo("team-a"); err == nil || !strings.Contains(err.Error(), "team-a") {
			t.Errorf("seriesQuery %s, metricsQuery %s: %v, want refused", c.series, c.query, err)
		}
	}
}
