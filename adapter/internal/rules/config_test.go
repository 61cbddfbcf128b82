package rules_test

import (
	"os"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

var pods = schema.GroupResource{Resource: "pods"}

var builtin = rules.MapperResolver(rules.BuiltinMapper())

func parse(t *testing.T, yaml string) *rules.Config {
	t.Helper()
	cfg, err := rules.Parse("config.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestSeedRuleRendersTheExpectedPromQL(t *testing.T) {
	b, err := os.ReadFile("testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.Parse("seed.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Rules) != 1 || len(cfg.ExternalRules) != 0 {
		t.Fatalf("parsed %d rules, %d external", len(cfg.Rules), len(cfg.ExternalRules))
	}
	r := cfg.Rules[0]
	name, ok := r.MetricName("flask_http_request_total")
	if !ok || name != "flask_http_request_per_second" {
		t.Fatalf("MetricName = %q %v, want flask_http_request_per_second", name, ok)
	}
	label, ok := r.LabelFor(pods, builtin)
	if !ok || label != "pod" {
		t.Fatalf("LabelFor(pods) = %q %v", label, ok)
	}
	q, err := r.Render(rules.QueryParts{Series: "flask_http_request_total", LabelMatchers: `namespace="purchase-system"`, GroupBy: "pod"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `rate(flask_http_request_total{namespace="purchase-system"}[2m])`; q != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s", q, want)
	}
	if r.Source != "seed.yaml:3" {
		t.Fatalf("Source = %q", r.Source)
	}
}

func TestNaming(t *testing.T) {
	cfg := parse(t, `
rules:
  - seriesQuery: '{__name__=~"^http_.*",namespace!=""}'
    seriesFilters:
      - isNot: "^http_.*_bucket$"
      - is: "^http_"
    resources: {template: "<<.Resource>>"}
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
  - seriesQuery: 'x_seconds_total{pod!=""}'
    resources: {overrides: {pod: {resource: pods}}}
    name: {matches: "^(.*)_seconds_total$"}
    metricsQuery: 'x'
  - seriesQuery: 'a_b{pod!=""}'
    resources: {overrides: {pod: {resource: pods}}}
    name: {matches: "^(a)_(b)$", as: "${2}_${1}"}
    metricsQuery: 'x'
`)
	tests := []struct {
		rule         int
		series, want string
		wantExcluded bool
	}{
		{0, "http_requests_total", "http_requests_total", false}, // default: the name as it is
		{0, "http_latency_bucket", "", true},                     // isNot filter
		{0, "grpc_requests_total", "", true},                     // is filter
		{1, "x_seconds_total", "x", false},                       // one group: $1 by default
		{1, "y_total", "", true},                                 // matches does not match
		{2, "a_b", "b_a", false},
	}
	for _, tt := range tests {
		got, ok := cfg.Rules[tt.rule].MetricName(tt.series)
		if ok == tt.wantExcluded || got != tt.want {
			t.Errorf("rule %d MetricName(%q) = %q %v, want %q excluded=%v", tt.rule, tt.series, got, ok, tt.want, tt.wantExcluded)
		}
	}
}

func TestResourcesOverridesAndTemplates(t *testing.T) {
	cfg := parse(t, `
rules:
  - seriesQuery: 'm{kube_namespace!=""}'
    resources: {template: "kube_<<.Group>>_<<.Resource>>"}
    metricsQuery: 'x'
  - seriesQuery: 'm{exported_pod!=""}'
    resources:
      overrides:
        exported_pod: {resource: pod}
        ns: {resource: namespace}
        deploy: {group: apps, resource: deployment}
    metricsQuery: 'x'
`)
	tmpl, ov := cfg.Rules[0], cfg.Rules[1]
	deployments := schema.GroupResource{Group: "apps", Resource: "deployments"}
	if l, ok := tmpl.LabelFor(deployments, builtin); !ok || l != "kube_apps_deployment" {
		t.Errorf("template LabelFor(deployments.apps) = %q %v", l, ok)
	}
	if gr, err := tmpl.ResourceFor("kube_apps_deployment", builtin); err != nil || gr != deployments {
		t.Errorf("template ResourceFor = %v %v", gr, err)
	}
	if _, err := tmpl.ResourceFor("pod", builtin); err == nil {
		t.Errorf("template matched a label it does not describe")
	}
	if l, ok := ov.LabelFor(pods, builtin); !ok || l != "exported_pod" {
		t.Errorf("override LabelFor(pods) = %q %v", l, ok)
	}
	if l, ok := ov.LabelFor(deployments, builtin); !ok || l != "deploy" {
		t.Errorf("override LabelFor(deployments.apps) = %q %v", l, ok)
	}
	got, unresolved := ov.MapLabels([]string{"exported_pod", "ns", "method"}, builtin)
	if len(got) != 2 || got[schema.GroupResource{Resource: "namespaces"}] != "ns" || got[pods] != "exported_pod" || len(unresolved) != 0 {
		t.Errorf("MapLabels = %v %v", got, unresolved)
	}
}

// A template writes a group with dots and dashes as underscores, as
// prometheus-adapter's: kube_networking_k8s_io_ingress is an Ingress.
func TestTemplateGroupsAreSanitized(t *testing.T) {
	cfg := parse(t, `
rules:
  - seriesQuery: 'm{kube_namespace!=""}'
    resources: {template: "kube_<<.Group>>_<<.Resource>>"}
    metricsQuery: 'x'
`)
	ingresses := schema.GroupResource{Group: "networking.k8s.io", Resource: "ingresses"}
	if l, ok := cfg.Rules[0].LabelFor(ingresses, builtin); !ok || l != "kube_networking_k8s_io_ingress" {
		t.Errorf("LabelFor(ingresses.networking.k8s.io) = %q %v", l, ok)
	}
	if gr, err := cfg.Rules[0].ResourceFor("kube_networking_k8s_io_ingress", builtin); err != nil || gr != ingresses {
		t.Errorf("ResourceFor(kube_networking_k8s_io_ingress) = %v %v", gr, err)
	}
}

func TestTemplateFields(t *testing.T) {
	cfg := parse(t, `
rules:
  - seriesQuery: 'm{pod!=""}'
    resources: {overrides: {pod: {resource: pod}, namespace: {resource: namespace}}}
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>) # <<range .GroupBySlice>><<.>>;<<end>> <<index .LabelValuesByName "pod">>'
`)
	q, err := cfg.Rules[0].Render(rules.QueryParts{Series: "m", LabelMatchers: `namespace="a",pod=~"p1|p2"`, GroupBy: "pod,x",
		GroupBySlice: []string{"pod", "x"}, LabelValuesByName: map[string]string{"pod": "p1|p2"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `sum(m{namespace="a",pod=~"p1|p2"}) by (pod,x) # pod;x; p1|p2`; q != want {
		t.Fatalf("got  %s\nwant %s", q, want)
	}
}

func TestBadConfigsNameTheLineAndReason(t *testing.T) {
	tests := map[string]struct{ yaml, want string }{
		"unknown field": {`
rules:
  - seriesQuery: 'm{pod!=""}'
    resource: {template: "<<.Resource>>"}
    metricsQuery: x
`, `config.yaml: line 4: field resource not found`},
		"bad regexp": {`
rules:
  - seriesQuery: 'm{pod!=""}'
    resources: {template: "<<.Resource>>"}
    name:
      matches: "^(.*_total$"
    metricsQuery: x
`, "config.yaml:6: rules[0].name.matches: error parsing regexp: missing closing )"},
		"template field that does not exist": {`
rules:
  - seriesQuery: 'm{pod!=""}'
    resources: {template: "<<.Resource>>"}
    metricsQuery: 'rate(<<.Serie>>[1m])'
`, `config.yaml:5: rules[0].metricsQuery:`},
		"no seriesQuery": {`
externalRules:
  - metricsQuery: x
`, "config.yaml:3: externalRules[0].seriesQuery: seriesQuery is required"},
		"bad series selector": {`
rules:
  - seriesQuery: 'm{pod=foo}'
    resources: {template: "<<.Resource>>"}
    metricsQuery: x
`, `config.yaml:3: rules[0].seriesQuery: "m{pod=foo}": "pod=foo" is not a label matcher`},
		"no resources": {`
rules:
  - seriesQuery: 'm'
    metricsQuery: x
`, "config.yaml:3: rules[0].resources: resources needs overrides or a template"},
		"two capture groups without as": {`
rules:
  - seriesQuery: 'm'
    resources: {template: "<<.Resource>>"}
    name: {matches: "(a)(b)"}
    metricsQuery: x
`, "config.yaml:5: rules[0].name.as: name.as is required"},
		"filter with both": {`
rules:
  - seriesQuery: 'm'
    resources: {template: "<<.Resource>>"}
    seriesFilters: [{is: a, isNot: b}]
    metricsQuery: x
`, "config.yaml:5: rules[0].seriesFilters: filter 0 must set exactly one of is and isNot"},
		"not YAML": {"rules: [", "config.yaml: line 1: did not find expected node content"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := rules.Parse("config.yaml", []byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestResourceRulesAreIgnoredWithAWarning(t *testing.T) {
	cfg := parse(t, `
resourceRules:
  cpu: {containerQuery: x}
rules: []
`)
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "resourceRules ignored") {
		t.Fatalf("warnings = %v", cfg.Warnings)
	}
}

func TestSelectorMatchers(t *testing.T) {
	sel, err := labels.Parse("consumergroup=g1,topic in (a.b,c),env!=dev,team,!legacy,tier notin (x)")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := rules.SelectorMatchers(sel)
	if err != nil {
		t.Fatal(err)
	}
	got := rules.JoinMatchers(ms)
	for _, part := range []string{`consumergroup="g1"`, `topic=~"a\\.b|c"`, `env!="dev"`, `team!=""`, `legacy=""`, `tier!~"x"`} {
		if !strings.Contains(got, part) {
			t.Errorf("%s lacks %s", got, part)
		}
	}
}

// An empty <<.LabelMatchers>> leaves no comma behind a brace (Prometheus
// rejects {,mode!="idle"}); commas inside string literals stay.
func TestEmptyMatchersRenderValidSelectors(t *testing.T) {
	cfg := parse(t, `
rules:
  - seriesQuery: 'm{node!=""}'
    resources: {overrides: {node: {resource: node}}}
    metricsQuery: 'label_replace(sum(rate(<<.Series>>{<<.LabelMatchers>>,mode!="idle"}[2m])) by (<<.GroupBy>>), "x", "{,}", "y", ",}") + <<.Series>>{ <<.LabelMatchers>> } + <<.Series>>{a="1",<<.LabelMatchers>>}'
`)
	for matchers, want := range map[string]string{
		"":          `label_replace(sum(rate(m{mode!="idle"}[2m])) by (node), "x", "{,}", "y", ",}") + m{  } + m{a="1"}`,
		`node="n1"`: `label_replace(sum(rate(m{node="n1",mode!="idle"}[2m])) by (node), "x", "{,}", "y", ",}") + m{ node="n1" } + m{a="1",node="n1"}`,
	} {
		q, err := cfg.Rules[0].Render(rules.QueryParts{Series: "m", LabelMatchers: matchers, GroupBy: "node"})
		if err != nil {
			t.Fatal(err)
		}
		if q != want {
			t.Errorf("matchers %q rendered\n  %s\nwant\n  %s", matchers, q, want)
		}
	}
}
