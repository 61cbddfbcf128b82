package rules_test

import (
	"os"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// FuzzParse feeds the rules parser any file. It never panics; a rejected
// file gets a message that names the file; an accepted file's rules can
// all be used: names map, resources resolve, queries render.
func FuzzParse(f *testing.F) {
	seed, err := os.ReadFile("testdata/seed.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	for _, s := range []string{
		"rules: []\nexternalRules: []\n",
		"rules:\n- seriesQuery: 'x{a=\"b\"}'\n  resources: {template: '<<.Resource>>'}\n  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'\n",
		"externalRules:\n- seriesQuery: '{__name__=~\"kafka_.*\"}'\n  name: {matches: '^kafka_(.*)$', as: '$1'}\n  metricsQuery: '<<.Series>>'\n",
		"kafkaLag:\n  access:\n  - namespaces: [a]\n    consumerGroups: ['*']\n    topics: [t]\n",
		"rules:\n- seriesQuery: 'x'\n  metricsQuery: '<<range .LabelValuesByName>><<.>><<end>>'\n",
		"rules:\n- seriesQuery: 'x'\n  metricsQuery: '<<template \"x\">>'\n",
		"rules: &a [*a]\n",
		"resourceRules: {cpu: {}}\n",
		"\t", "{", "rules: 1", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := rules.Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		parts := rules.QueryParts{Series: "s", LabelMatchers: `namespace="n"`, GroupBy: "pod",
			GroupBySlice: []string{"pod"}, LabelValuesByName: map[string]string{"pod": "p"}}
		builtin := rules.MapperResolver(rules.BuiltinMapper())
		for _, r := range append(append([]*rules.Rule{}, cfg.Rules...), cfg.ExternalRules...) {
			if r.Source == "" || !strings.HasPrefix(r.Source, "fuzz.yaml:") {
				t.Fatalf("rule without a source line: %+v", r)
			}
			if _, err := r.Render(parts); err != nil {
				t.Fatalf("accepted rule %s does not render: %v", r.Source, err)
			}
			r.MetricName("s_total")
			r.MapLabels([]string{"namespace", "pod", "node", "kube_deployment", "__name__"}, builtin)
			r.LabelFor(schema.GroupResource{Resource: "pods"}, builtin)
		}
		_ = cfg.KafkaLag.Allow("purchase-system", []string{"g"}, []string{"t"})
	})
}
