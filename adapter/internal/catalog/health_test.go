package catalog

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// Two rules: one serving http_rate from a named series, one serving
// whatever its pattern matches.
const twoRules = `rules:
- seriesQuery: 'http_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^(.*)_total$", as: "http_rate"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
- seriesQuery: '{__name__=~"queue_.*",namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
`

var pods = schema.GroupResource{Resource: "pods"}

// fakeDiscoverer answers each rule (by the start of its seriesQuery) with
// a metric of that name, or with the error set for it.
type fakeDiscoverer struct {
	mu   sync.Mutex
	errs map[string]error
}

func (f *fakeDiscoverer) fail(prefix string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[prefix] = err
}

func (f *fakeDiscoverer) DiscoverRule(_ context.Context, r *rules.Rule) promsource.RuleDiscovery {
	f.mu.Lock()
	defer f.mu.Unlock()
	for prefix, err := range f.errs {
		if strings.HasPrefix(r.SeriesQuery, prefix) && err != nil {
			return promsource.RuleDiscovery{Rule: r, Err: err}
		}
	}
	name := "http_rate"
	series := "http_requests_total"
	switch {
	case strings.HasPrefix(r.SeriesQuery, "{"):
		name, series = "queue_depth", "queue_depth"
	case strings.Contains(r.SeriesQuery, "jobs_queued"):
		name, series = "jobs_queued", "jobs_queued"
	}
	return promsource.RuleDiscovery{Rule: r, Series: []string{series},
		Metrics: []promsource.Metric{{Name: name, Series: series, Rule: r, Resources: []schema.GroupResource{pods}}}}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newCatalog(t *testing.T) (*Catalog, *fakeDiscoverer, *clock, *prometheus.Registry) {
	t.Helper()
	cfg, err := rules.Parse("config.yaml", []byte(twoRules))
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDiscoverer{errs: map[string]error{}}
	clk := &clock{t: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	c := New(cfg, d, nil, Options{StaleAfter: 10 * time.Minute, Now: clk.now, Metrics: NewMetrics(reg), RediscoverAfter: time.Hour})
	c.Discover(context.Background())
	return c, d, clk, reg
}

func isNotFound(err error) bool {
	var nf *NotFoundError
	return errors.As(err, &nf)
}

// A rule whose discovery starts failing keeps serving what it found, for
// StaleAfter, and says so; the other rule's metrics are untouched; after
// StaleAfter its metric answers an error naming the rule — not a 404.
func TestAFailingRuleServesWhatItFoundThenSaysWhyNever404(t *testing.T) {
	c, d, clk, reg := newCatalog(t)
	ctx := context.Background()
	if _, err := c.RequireCustom(ctx, "shop", "queue_depth", pods); err != nil {
		t.Fatalf("before any failure: %v", err)
	}
	d.fail("{", errors.New("connection refused"))
	clk.add(time.Minute)
	c.Discover(ctx)

	// Within StaleAfter: still served, and the failure shows.
	if _, err := c.RequireCustom(ctx, "shop", "queue_depth", pods); err != nil {
		t.Errorf("a minute into the failure: %v, want the last discovery served", err)
	}
	if _, err := c.RequireCustom(ctx, "shop", "http_rate", pods); err != nil {
		t.Errorf("the other rule's metric: %v", err)
	}
	src := c.Rules().Rules[1].Source
	if v := testutil.ToFloat64(c.o.Metrics.ruleFailing.WithLabelValues(src)); v != 1 {
		t.Errorf("adapter_rule_discovery_failing{rule=%q} = %v, want 1", src, v)
	}
	if v := testutil.ToFloat64(c.o.Metrics.ruleFailing.WithLabelValues(c.Rules().Rules[0].Source)); v != 0 {
		t.Errorf("the healthy rule's adapter_rule_discovery_failing = %v, want 0", v)
	}
	if v := testutil.ToFloat64(c.o.Metrics.ruleErrors.WithLabelValues(src, "unreachable")); v != 1 {
		t.Errorf("adapter_rule_discovery_errors_total{rule=%q,kind=unreachable} = %v, want 1", src, v)
	}
	h := c.Health()
	if h[1].FailingSince.IsZero() || h[1].LastErr == nil || h[1].Expired || h[0].LastErr != nil {
		t.Errorf("health %+v", h)
	}

	// Past StaleAfter: no longer listed nor served, and the answer names
	// the rule and its error instead of "not found".
	clk.add(10 * time.Minute)
	c.Discover(ctx)
	for _, info := range c.ListCustom() {
		if info.Metric == "queue_depth" {
			t.Errorf("queue_depth still listed %s after the rule's last discovery", 11*time.Minute)
		}
	}
	_, err := c.RequireCustom(ctx, "shop", "queue_depth", pods)
	if err == nil || isNotFound(err) || !strings.Contains(err.Error(), src) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("past StaleAfter: %v, want an error (not not-found) naming rule %s and its cause", err, src)
	}
	if _, err := c.RequireCustom(ctx, "shop", "http_rate", pods); err != nil {
		t.Errorf("the other rule's metric past StaleAfter: %v", err)
	}
	if n := testutil.CollectAndCount(reg, "adapter_rule_series"); n != 2 {
		t.Errorf("%d adapter_rule_series series, want one per rule", n)
	}

	// It recovers: served again, the gauge back to 0.
	d.fail("{", nil)
	c.Discover(ctx)
	if _, err := c.RequireCustom(ctx, "shop", "queue_depth", pods); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	if v := testutil.ToFloat64(c.o.Metrics.ruleFailing.WithLabelValues(src)); v != 0 {
		t.Errorf("after recovery adapter_rule_discovery_failing = %v, want 0", v)
	}
}

// A rule failing from the start: a metric it may serve is an error, not a
// 404; a name no failing rule can serve is still a 404.
func TestARuleThatNeverDiscoveredAnswers503NotNotFound(t *testing.T) {
	cfg, err := rules.Parse("config.yaml", []byte(twoRules))
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDiscoverer{errs: map[string]error{"http_requests_total": errors.New("timeout")}}
	c := New(cfg, d, nil, Options{RediscoverAfter: time.Hour})
	ctx := context.Background()
	c.Discover(ctx)
	if _, err := c.RequireCustom(ctx, "shop", "http_rate", pods); err == nil || isNotFound(err) {
		t.Errorf("http_rate with its rule failing from the start: %v, want an error that is not not-found", err)
	}
	// The failing rule names one series, renamed http_rate: it cannot
	// serve another name.
	d.fail("{", errors.New("down"))
	d.fail("http_requests_total", nil)
	c.Discover(ctx)
	d.fail("{", nil)
	d.fail("http_requests_total", errors.New("timeout"))
	c.Discover(ctx)
	if _, err := c.RequireCustom(ctx, "shop", "no_such_metric", pods); !isNotFound(err) {
		// The pattern rule is healthy now; the failing one yields only http_rate.
		t.Errorf("a name no failing rule can serve: %v, want not-found", err)
	}
}

// A removed rule's self-metric series go with it.
func TestARemovedRuleLeavesNoSeries(t *testing.T) {
	c, _, _, reg := newCatalog(t)
	one, err := rules.Parse("config.yaml", []byte(strings.SplitN(twoRules, "- seriesQuery: '{", 2)[0]))
	if err != nil {
		t.Fatal(err)
	}
	c.SetConfig(context.Background(), one)
	if n := testutil.CollectAndCount(reg, "adapter_rule_series"); n != 1 {
		t.Errorf("%d adapter_rule_series series after a rule was removed, want 1", n)
	}
}
