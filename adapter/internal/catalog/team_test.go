package catalog

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// teamRule is a MetricsRule of namespace ns, as the adapter compiles one.
func teamRule(t *testing.T, ns, name, seriesQuery, as string) *rules.Rule {
	t.Helper()
	cfg, err := rules.Parse("MetricsRule "+ns+"/"+name, []byte(`rules:
- seriesQuery: '`+seriesQuery+`'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^(.*)$", as: "`+as+`"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules[0]
	if err := r.ScopeTo(ns); err != nil {
		t.Fatal(err)
	}
	r.Source = "MetricsRule " + ns + "/" + name
	return r
}

// A team's rule serves its namespace only; it cannot take a metric the
// operator's rules serve there (the clash is in its health, for its
// status); a broken one changes nothing for the others.
func TestTeamRulesServeTheirNamespaceOnlyAndShadowNothing(t *testing.T) {
	c, d, _, _ := newCatalog(t)
	ctx := context.Background()
	jobs := teamRule(t, "team-a", "jobs", `jobs_queued{pod!=""}`, "jobs_queued")
	shadow := teamRule(t, "team-a", "shadow", `http_requests_total{pod!=""}`, "http_rate")
	broken := teamRule(t, "team-b", "broken", `jobs_queued_b{pod!=""}`, "jobs_b")
	d.fail("jobs_queued_b", errors.New("bad_data: parse error"))
	c.SetTeamRules(ctx, []*rules.Rule{jobs, shadow, broken})

	if m, err := c.RequireCustom(ctx, "team-a", "jobs_queued", pods); err != nil || m.Rule != jobs {
		t.Errorf("jobs_queued in team-a: %v (rule %v), want the team's rule", err, m.Rule)
	}
	if _, ok := c.Custom("team-b", "jobs_queued", pods); ok {
		t.Error("team-a's jobs_queued is served in team-b")
	}
	if m, ok := c.Custom("team-a", "http_rate", pods); !ok || m.Rule.Namespace != "" {
		t.Errorf("http_rate in team-a: %v %v, want the operator's rule", ok, m.Rule)
	}
	var shadowHealth, brokenHealth RuleHealth
	for _, h := range c.Health() {
		switch h.Rule {
		case shadow:
			shadowHealth = h
		case broken:
			brokenHealth = h
		}
	}
	if len(shadowHealth.Conflicts) != 1 || !strings.Contains(shadowHealth.Conflicts[0], "metric http_rate on pods is served by config.yaml:2") {
		t.Errorf("the shadowing rule's conflicts: %q", shadowHealth.Conflicts)
	}
	if brokenHealth.LastErr == nil || !strings.Contains(brokenHealth.LastErr.Error(), "bad_data") {
		t.Errorf("the broken rule's health: %+v", brokenHealth)
	}
	// The broken team rule takes nothing from anyone.
	for _, ns := range []string{"team-a", "team-b", "shop"} {
		if _, err := c.RequireCustom(ctx, ns, "http_rate", pods); err != nil {
			t.Errorf("http_rate in %s beside a broken team rule: %v", ns, err)
		}
	}
	if _, err := c.RequireCustom(ctx, "team-a", "jobs_queued", pods); err != nil {
		t.Errorf("team-a's metric beside team-b's broken rule: %v", err)
	}
}
