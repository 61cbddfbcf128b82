package explain_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/explain"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// failing answers every rule's discovery with err.
type failing struct{ err error }

func (f failing) DiscoverRule(_ context.Context, r *rules.Rule) promsource.RuleDiscovery {
	return promsource.RuleDiscovery{Rule: r, Err: f.err}
}

// explain's list of rules says which rule fails, since when and why.
func TestExplainSaysARuleFails(t *testing.T) {
	cfg, err := rules.Parse("config.yaml", []byte(`rules:
- seriesQuery: 'http_requests_total{namespace!="",pod!=""}'
  resources: {template: "<<.Resource>>"}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	c := catalog.New(cfg, failing{errors.New("dial tcp 10.0.0.1:9090: connection refused")}, nil, catalog.Options{Now: func() time.Time { return now }})
	c.Discover(context.Background())
	var b strings.Builder
	(&explain.Explainer{Catalog: c, Now: func() time.Time { return now }}).Rules(&b)
	out := b.String()
	for _, want := range []string{"rule config.yaml:2", "FAILING since 2026-12-05T12:00:00Z", "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain's rules do not say %q:\n%s", want, out)
		}
	}
	// The request for its metric names the rule, not "not served".
	if err := c.NotServed("shop", "http_requests_per_second", schema.GroupResource{Resource: "pods"}); err == nil || !strings.Contains(err.Error(), "rule config.yaml:2, which may serve it") {
		t.Errorf("NotServed: %v", err)
	}
}
