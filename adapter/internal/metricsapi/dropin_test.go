package metricsapi_test

// prometheus-adapter's semantics, restated as this project's own tests:
// the rule forms are those of prometheus-adapter v0.12.0's
// docs/config.md, docs/walkthrough.md and its config-gen default rules
// (cmd/config-gen/utils/default.go); the expected behaviour is what its
// pkg/naming (resource_converter.go, metrics_query.go) does with them.

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

var ingresses = schema.GroupResource{Group: "networking.k8s.io", Resource: "ingresses"}

func parseRules(t *testing.T, yaml string) *rules.Config {
	t.Helper()
	cfg, err := rules.Parse("config.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// nginxSeries is ingress-nginx's request counter for one Ingress.
func nginxSeries(ns, ingress string, at time.Time, v float64) promtest.Series {
	return promtest.Series{Labels: map[string]string{
		"__name__": "nginx_ingress_controller_requests", "namespace": ns, "ingress": ingress,
		"job": "ingress-nginx", "instance": "10.0.0.1:10254", "status": "200",
	}, Value: v, Timestamp: at}
}

func ingressObject(ns, name string) runtime.Object {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "Ingress"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "shop"}},
	}
}

func listed(p *metricsapi.Provider) []string {
	var out []string
	for _, info := range p.ListAllMetrics() {
		out = append(out, info.String())
	}
	sort.Strings(out)
	return out
}

// Point 1: a label mapped to "ingress" (kind, singular or plural; group
// given or left out) is the Ingress the cluster serves, in
// networking.k8s.io; it is listed there and answered there. A group the
// cluster does not serve (extensions) is not listed at all.
func TestResourcesResolveThroughTheRESTMapper(t *testing.T) {
	now := time.Now()
	for name, resources := range map[string]string{
		"override, singular, no group": `overrides: {namespace: {resource: namespace}, ingress: {resource: ingress}}`,
		"override, plural, group":      `overrides: {namespace: {resource: namespaces}, ingress: {group: networking.k8s.io, resource: ingresses}}`,
		"override, kind":               `overrides: {namespace: {resource: Namespace}, ingress: {resource: Ingress}}`,
		"template without a prefix":    `template: "<<.Resource>>"`,
	} {
		t.Run(name, func(t *testing.T) {
			cfg := parseRules(t, `
rules:
  - seriesQuery: 'nginx_ingress_controller_requests{namespace!="",ingress!=""}'
    resources: {`+resources+`}
    name: {matches: "^(.*)_requests$", as: "${1}_requests_per_second"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
`)
			f := newFixtureWith(t, cfg, time.Minute, []promtest.Series{nginxSeries("shop", "web", now, 4), nginxSeries("shop", "api", now, 2)},
				ingressObject("shop", "web"), ingressObject("shop", "api"))
			got := listed(f.p)
			want := []string{
				"ingresses.networking.k8s.io/nginx_ingress_controller_requests_per_second(namespaced)",
				"namespaces/nginx_ingress_controller_requests_per_second",
			}
			if name == "template without a prefix" {
				// As in prometheus-adapter: under <<.Resource>> the scrape's
				// job label is the Job resource (batch), which this cluster
				// serves; instance, status and __name__ name nothing.
				want = []string{want[0], "jobs.batch/nginx_ingress_controller_requests_per_second(namespaced)", want[1]}
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("listed %v\nwant   %v (instance, status and __name__ name no resource this cluster serves)", got, want)
			}
			info := cmprovider.CustomMetricInfo{GroupResource: ingresses, Namespaced: true, Metric: "nginx_ingress_controller_requests_per_second"}
			one, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web"}, info, labels.Everything())
			if err != nil {
				t.Fatalf("GetMetricByName(ingress shop/web): %v", err)
			}
			if one.Value.String() != "4" || one.DescribedObject.Kind != "Ingress" || one.DescribedObject.APIVersion != "networking.k8s.io/v1" {
				t.Fatalf("= %+v, want 4 on Ingress networking.k8s.io/v1", one)
			}
			sel, _ := labels.Parse("app=shop")
			list, err := f.p.GetMetricBySelector(context.Background(), "shop", sel, info, labels.Everything())
			if err != nil || len(list.Items) != 2 {
				t.Fatalf("GetMetricBySelector = %+v, %v; want both ingresses", list, err)
			}
		})
	}

	t.Run("a group the cluster does not serve", func(t *testing.T) {
		cfg := parseRules(t, `
rules:
  - seriesQuery: 'nginx_ingress_controller_requests{namespace!="",ingress!=""}'
    resources: {overrides: {namespace: {resource: namespace}, ingress: {group: extensions, resource: ingress}}}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
`)
		f := newFixtureWith(t, cfg, time.Minute, []promtest.Series{nginxSeries("shop", "web", now, 4)}, ingressObject("shop", "web"))
		for _, l := range listed(f.p) {
			if strings.HasPrefix(l, "ingress") {
				t.Fatalf("listed %v: a metric on ingresses.extensions, which this cluster does not serve, can never be answered", listed(f.p))
			}
		}
		d := f.catalog.Discoveries()[0]
		if len(d.Metrics) != 1 || !strings.Contains(strings.Join(d.Metrics[0].Unresolved, " "), "networking.k8s.io") {
			t.Fatalf("discovery %+v: want the override named as not served, with the group that serves ingress", d.Metrics)
		}
	})
}

// Point 5: a template without a prefix turns only labels that name a
// served resource into resources; never __name__ or other __ labels.
func TestPrefixlessTemplateMapsOnlyServedResources(t *testing.T) {
	cfg := parseRules(t, `
rules:
  - seriesQuery: '{__name__=~"^container_.*",container!="POD",namespace!="",pod!=""}'
    resources: {template: "<<.Resource>>"}
    name: {matches: "^container_(.*)_seconds_total$"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[2m])) by (<<.GroupBy>>)'
`)
	s := promtest.Series{Labels: map[string]string{"__name__": "container_cpu_usage_seconds_total", "namespace": "shop", "pod": "web-1",
		"container": "web", "node": "n1", "job": "kubelet", "instance": "n1", "__meta_x": "y", "deployment": "web"}, Value: 1, Timestamp: time.Now()}
	f := newFixtureWith(t, cfg, time.Minute, []promtest.Series{s})
	got := strings.Join(listed(f.p), " ")
	want := "deployments.apps/cpu_usage(namespaced) jobs.batch/cpu_usage(namespaced) namespaces/cpu_usage nodes/cpu_usage pods/cpu_usage(namespaced)"
	if got != want {
		t.Fatalf("listed %s\nwant   %s", got, want)
	}
}

// customQuery renders what a request would ask Prometheus.
func customQuery(t *testing.T, f *fixture, ns string, gr schema.GroupResource, metric, metricSelector string, names ...string) string {
	t.Helper()
	sel, err := labels.Parse(metricSelector)
	if err != nil {
		t.Fatal(err)
	}
	info := cmprovider.CustomMetricInfo{GroupResource: gr, Namespaced: ns != "", Metric: metric}
	q, err := f.p.CustomQuery(context.Background(), ns, info, sel, names)
	if err != nil {
		t.Fatal(err)
	}
	query, _, _, err := q.PromQL()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.NewParser(parser.Options{}).ParseExpr(query); err != nil {
		t.Fatalf("rendered %s, which Prometheus rejects: %v", query, err)
	}
	return query
}

// Point 2: <<.LabelValuesByName>> carries the objects' names joined by
// "|" (and the namespace), as in prometheus-adapter; a rule whose query
// does not use it keeps queries free of names.
func TestLabelValuesByNameCarriesTheObjectNames(t *testing.T) {
	cfg := parseRules(t, `
rules:
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^(.*)_total$", as: "${1}_by_name"}
    metricsQuery: 'sum(rate(<<.Series>>{namespace="<<index .LabelValuesByName "namespace">>",pod=~"<<index .LabelValuesByName "pod">>"}[2m])) by (<<.GroupBy>>)'
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^(.*)_total$", as: "${1}_per_second"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
`)
	now := time.Now()
	series := append(promtest.PodSeries("shop", "bar", now, 1), promtest.PodSeries("shop", "baz", now, 2)...)
	f := newFixtureWith(t, cfg, time.Minute, series, pod("shop", "bar", nil), pod("shop", "baz", nil))

	byName := customQuery(t, f, "shop", pods, "flask_http_request_by_name", "", "baz", "bar")
	if want := `sum(rate(flask_http_request_total{namespace="shop",pod=~"bar|baz"}[2m])) by (pod)`; byName != want {
		t.Fatalf("rendered %s\nwant     %s", byName, want)
	}
	plain := customQuery(t, f, "shop", pods, "flask_http_request_per_second", "", "baz", "bar")
	if strings.Contains(plain, "bar") {
		t.Fatalf("rendered %s: a rule that does not use LabelValuesByName must not carry pod names", plain)
	}
	// End to end: the names rule answers for both pods.
	info := cmprovider.CustomMetricInfo{GroupResource: pods, Namespaced: true, Metric: "flask_http_request_by_name"}
	list, err := f.p.GetMetricBySelector(context.Background(), "shop", labels.Everything(), info, labels.Everything())
	if err != nil || len(list.Items) != 2 {
		t.Fatalf("= %+v, %v; want bar and baz", list, err)
	}
}

var pods = schema.GroupResource{Resource: "pods"}

// externalQuery renders what an external metric request asks Prometheus.
func externalQuery(t *testing.T, f *fixture, ns, metric, metricSelector string) string {
	t.Helper()
	sel, err := labels.Parse(metricSelector)
	if err != nil {
		t.Fatal(err)
	}
	sq, err := f.p.ExternalQuery(context.Background(), ns, sel, metric)
	if err != nil {
		t.Fatal(err)
	}
	query, _, err := sq.(promsource.ExternalQuery).PromQL()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.NewParser(parser.Options{}).ParseExpr(query); err != nil {
		t.Fatalf("rendered %s, which Prometheus rejects: %v", query, err)
	}
	return query
}

// Point 3: an external rule that maps a label to namespaces filters on
// that label; namespaced: false asks across namespaces;
// LabelValuesByName carries the metric selector's values.
func TestExternalRulesAndNamespaces(t *testing.T) {
	cfg := parseRules(t, `
externalRules:
  - seriesQuery: 'queue_depth{exported_namespace!=""}'
    resources: {overrides: {exported_namespace: {resource: namespace}}}
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
  - seriesQuery: 'cluster_queue_depth'
    resources: {namespaced: false}
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>,source!="test"})'
  - seriesQuery: 'named_queue_depth'
    resources: {namespaced: false}
    metricsQuery: 'max(<<.Series>>{queue=~"<<index .LabelValuesByName "queue">>"})'
`)
	now := time.Now()
	f := newFixtureWith(t, cfg, time.Minute, []promtest.Series{
		{Labels: map[string]string{"__name__": "queue_depth", "exported_namespace": "shop", "namespace": "monitoring", "queue": "orders"}, Value: 7, Timestamp: now},
		{Labels: map[string]string{"__name__": "cluster_queue_depth", "namespace": "monitoring"}, Value: 3, Timestamp: now},
		{Labels: map[string]string{"__name__": "named_queue_depth", "queue": "a"}, Value: 1, Timestamp: now},
	})
	if got := externalQuery(t, f, "shop", "queue_depth", "queue=orders"); got != `sum(queue_depth{exported_namespace="shop",queue="orders"}) by (queue)` {
		t.Errorf("namespace mapped to exported_namespace: rendered %s", got)
	}
	// Point 4 too: no matchers at all still renders valid PromQL.
	if got := externalQuery(t, f, "shop", "cluster_queue_depth", ""); got != `sum(cluster_queue_depth{source!="test"})` {
		t.Errorf("namespaced: false, no selector: rendered %s", got)
	}
	if got := externalQuery(t, f, "shop", "named_queue_depth", "queue in (a,b)"); got != `max(named_queue_depth{queue=~"a|b"})` {
		t.Errorf("LabelValuesByName of an external rule: rendered %s", got)
	}
	info := cmprovider.ExternalMetricInfo{Metric: "queue_depth"}
	list, err := f.p.GetExternalMetric(context.Background(), "shop", labels.Everything(), info)
	if err != nil || len(list.Items) != 1 || list.Items[0].Value.String() != "7" {
		t.Fatalf("GetExternalMetric(queue_depth in shop) = %+v, %v; want 7 from exported_namespace=shop", list, err)
	}
}

// Point 4: the rule forms of prometheus-adapter's documentation and its
// config-gen defaults render valid PromQL for every request shape:
// namespaced and cluster-scoped resources, with and without a metric
// selector.
func TestDocumentedRuleFormsRenderValidPromQL(t *testing.T) {
	cfg := parseRules(t, `
rules:
  # config-gen: container metrics in seconds
  - seriesQuery: '{__name__=~"^container_.*",container!="POD",namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^container_(.*)_seconds_total$"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[5m])) by (<<.GroupBy>>)'
  # config-gen: everything else, namespaced, by template
  - seriesQuery: '{namespace!="",__name__!~"^container_.*"}'
    resources: {template: "<<.Resource>>"}
    name: {matches: "^(.*)_total$", as: "${1}_per_second"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[5m])) by (<<.GroupBy>>)'
  # config.md: node metrics, cluster-scoped, nothing but the selector
  - seriesQuery: 'node_cpu_seconds_total{node!=""}'
    resources: {overrides: {node: {resource: node}}}
    name: {matches: "^node_(.*)_seconds_total$", as: "node_${1}_busy"}
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>,mode!="idle"}[2m])) by (<<.GroupBy>>)'
`)
	now := time.Now()
	f := newFixtureWith(t, cfg, time.Minute, []promtest.Series{
		{Labels: map[string]string{"__name__": "container_cpu_usage_seconds_total", "namespace": "shop", "pod": "p", "container": "c"}, Value: 1, Timestamp: now},
		{Labels: map[string]string{"__name__": "http_requests_total", "namespace": "shop", "pod": "p", "service": "s"}, Value: 1, Timestamp: now},
		{Labels: map[string]string{"__name__": "node_cpu_seconds_total", "node": "n1", "mode": "user"}, Value: 1, Timestamp: now},
	})
	nodes := schema.GroupResource{Resource: "nodes"}
	for _, tt := range []struct {
		ns     string
		gr     schema.GroupResource
		metric string
	}{
		{"shop", pods, "cpu_usage"},
		{"", schema.GroupResource{Resource: "namespaces"}, "cpu_usage"},
		{"shop", pods, "http_requests_per_second"},
		{"", nodes, "node_cpu_busy"},
	} {
		for _, sel := range []string{"", "mode=user", "!canary"} {
			q := customQuery(t, f, tt.ns, tt.gr, tt.metric, sel, "p")
			if strings.Contains(q, "{,") || strings.Contains(q, ",}") || strings.Contains(q, ",,") {
				t.Errorf("%s on %s, selector %q: rendered %s", tt.metric, tt.gr, sel, q)
			}
		}
	}
	if q := customQuery(t, f, "", nodes, "node_cpu_busy", ""); q != `sum(rate(node_cpu_seconds_total{mode!="idle"}[2m])) by (node)` {
		t.Errorf("node rule without matchers rendered %s", q)
	}
}
