package teamrules_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/teamrules"
)

func object(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

const good = `apiVersion: adapter.purchase-system.dev/v1alpha1
kind: MetricsRule
metadata: {name: jobs, namespace: team-a, generation: 2}
spec:
  seriesQuery: 'jobs_queued{pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
`

// A MetricsRule compiles to a rule of its namespace, named after it.
func TestAMetricsRuleIsARuleOfItsNamespace(t *testing.T) {
	r, err := teamrules.Compile(object(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if r.Namespace != "team-a" || r.Source != "MetricsRule team-a/jobs" || !strings.Contains(r.SeriesQuery, `namespace="team-a"`) || r.External {
		t.Errorf("rule %+v", r)
	}
	ext, err := teamrules.Compile(object(t, strings.Replace(good, "spec:\n", "spec:\n  external: true\n", 1)))
	if err != nil || !ext.External {
		t.Errorf("external: true: %v %+v", err, ext)
	}
}

// What admission cannot check, the adapter refuses with a reason: another
// namespace, a query that does not parse, an unknown field.
func TestWhatAdmissionCannotCheckIsRefusedWithAReason(t *testing.T) {
	for name, c := range map[string]struct{ from, to, want string }{
		"another namespace": {`jobs_queued{pod!=""}`, `jobs_queued{namespace="purchase-system",pod!=""}`, "reaches beyond namespace team-a"},
		"unparsable query":  {`by (<<.GroupBy>>)'`, `by ('`, "metricsQuery"},
		"unknown field":     {"  seriesQuery:", "  seriesQuerry: x\n  seriesQuery:", "seriesQuerry"},
	} {
		_, err := teamrules.Compile(object(t, strings.Replace(good, c.from, c.to, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "MetricsRule team-a/jobs") {
			t.Errorf("%s: %v, want an error naming the rule and %q", name, err, c.want)
		}
	}
}

func condition(s teamrules.Status, typ string) string {
	for _, c := range s.Conditions {
		if c.Type == typ {
			return string(c.Status) + "/" + c.Reason
		}
	}
	return ""
}

// Status says what the adapter did with the rule.
func TestStatusSaysWhatTheRuleDoes(t *testing.T) {
	refused := teamrules.StatusOf(3, errors.New("MetricsRule team-a/jobs: seriesQuery …: reaches beyond namespace team-a"), nil)
	if condition(refused, "Accepted") != "False/Invalid" || !strings.Contains(refused.LastError, "beyond namespace") || refused.ObservedGeneration != 3 {
		t.Errorf("refused: %+v", refused)
	}
	r := &rules.Rule{Source: "MetricsRule team-a/jobs"}
	ok := teamrules.StatusOf(2, nil, &catalog.RuleHealth{Rule: r, LastSuccess: time.Now(), Series: 3, Metrics: 1, MetricNames: []string{"jobs_queued"},
		Conflicts: []string{"metric http_rate on pods is served by config.yaml:2"}})
	if condition(ok, "Accepted") != "True/Accepted" || condition(ok, "Discovered") != "True/Discovered" || ok.Series != 3 ||
		len(ok.Metrics) != 1 || len(ok.Conflicts) != 1 || ok.LastDiscoveryTime == nil {
		t.Errorf("discovered: %+v", ok)
	}
	failing := teamrules.StatusOf(2, nil, &catalog.RuleHealth{Rule: r, LastSuccess: time.Now(), LastErr: errors.New("bad_data"), FailingSince: time.Now()})
	if condition(failing, "Discovered") != "False/DiscoveryFailing" || failing.LastError != "bad_data" {
		t.Errorf("failing: %+v", failing)
	}
}
