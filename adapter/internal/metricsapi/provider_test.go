package metricsapi_test

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	metadatafake "k8s.io/client-go/metadata/fake"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/sources"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

const seedRule = `
rules:
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: "namespace"}
        pod: {resource: "pod"}
    name:
      matches: "^(.*)_total$"
      as: "${1}_per_second"
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
`

func seedConfig(t testing.TB) *rules.Config {
	t.Helper()
	cfg, err := rules.Parse("config.yaml", []byte(seedRule))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

var podsInfo = cmprovider.CustomMetricInfo{GroupResource: schema.GroupResource{Resource: "pods"}, Namespaced: true, Metric: "flask_http_request_per_second"}

// mapper knows what a cluster serves: the core resources, apps, and
// Ingress in networking.k8s.io only (Kubernetes 1.37 no longer serves
// extensions).
func mapper() apimeta.RESTMapper {
	m := apimeta.NewDefaultRESTMapper([]schema.GroupVersion{{Version: "v1"}, {Group: "apps", Version: "v1"}, {Group: "batch", Version: "v1"}, {Group: "networking.k8s.io", Version: "v1"}})
	m.Add(schema.GroupVersionKind{Version: "v1", Kind: "Pod"}, apimeta.RESTScopeNamespace)
	m.Add(schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}, apimeta.RESTScopeRoot)
	m.Add(schema.GroupVersionKind{Version: "v1", Kind: "Secret"}, apimeta.RESTScopeNamespace)
	m.Add(schema.GroupVersionKind{Version: "v1", Kind: "Node"}, apimeta.RESTScopeRoot)
	m.Add(schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, apimeta.RESTScopeNamespace)
	m.Add(schema.GroupVersionKind{Group: "networking.k8s.io", Version: "v1", Kind: "Ingress"}, apimeta.RESTScopeNamespace)
	m.Add(schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"}, apimeta.RESTScopeNamespace)
	return m
}

func pod(ns, name string, lbls map[string]string) runtime.Object {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
	}
}

type fixture struct {
	reg     *prometheus.Registry
	prom    *promtest.Server
	p       *metricsapi.Provider
	catalog *catalog.Catalog
	store   *store.Store
	meta    *metadatafake.FakeMetadataClient
}

func newFixture(t testing.TB, maxAge time.Duration, series []promtest.Series, objects ...runtime.Object) *fixture {
	t.Helper()
	return newFixtureWith(t, seedConfig(t), maxAge, series, objects...)
}

// newFixtureWith is newFixture under rules of the test's own.
func newFixtureWith(t testing.TB, cfg *rules.Config, maxAge time.Duration, series []promtest.Series, objects ...runtime.Object) *fixture {
	t.Helper()
	prom := promtest.New(series...)
	t.Cleanup(prom.Close)
	src, err := promsource.New(promsource.ClientOptions{URL: prom.URL, Timeout: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	src.Resolver = rules.MapperResolver(mapper())
	scheme := metadatafake.NewTestScheme()
	_ = metav1.AddMetaToScheme(scheme)
	meta := metadatafake.NewSimpleMetadataClient(scheme, objects...)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cat := catalog.New(cfg, src, mapper(), catalog.Options{RediscoverAfter: 100 * time.Millisecond, Logger: logger})
	st := store.New(&sources.Router{Prometheus: src}, store.Options{Fresh: time.Minute})
	reg := prometheus.NewRegistry()
	p := metricsapi.New(cat, st, mapper(), meta, stop, metricsapi.Options{MaxSampleAge: maxAge, Logger: logger, Metrics: metricsapi.NewMetrics(reg)})
	cat.Discover(context.Background())
	return &fixture{reg: reg, prom: prom, p: p, catalog: cat, store: st, meta: meta}
}

func TestPodValueIsTheSumOfItsSeries(t *testing.T) {
	now := time.Now()
	var series []promtest.Series
	series = append(series, promtest.PodSeries("shop", "web-1", now, 10, 2.5, 0.25)...) // 3 series: 12.75 req/s
	series = append(series, promtest.PodSeries("shop", "web-2", now, 7)...)
	series = append(series, promtest.PodSeries("other", "web-9", now, 100)...)
	f := newFixture(t, time.Minute, series,
		pod("shop", "web-1", map[string]string{"app": "web"}),
		pod("shop", "web-2", map[string]string{"app": "web"}),
		pod("shop", "db-1", map[string]string{"app": "db"}),
		pod("other", "web-9", map[string]string{"app": "web"}))

	sel, _ := labels.Parse("app=web")
	list, err := f.p.GetMetricBySelector(context.Background(), "shop", sel, podsInfo, labels.Everything())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, it := range list.Items {
		got[it.DescribedObject.Name] = it.Value.String()
		if it.DescribedObject.Kind != "Pod" || it.DescribedObject.Namespace != "shop" || it.Metric.Name != "flask_http_request_per_second" {
			t.Errorf("item %+v", it)
		}
		if !it.Timestamp.Time.Equal(now.Truncate(time.Microsecond)) && it.Timestamp.Time.Sub(now).Abs() > time.Millisecond {
			t.Errorf("timestamp %v, want the samples' own %v", it.Timestamp.Time, now)
		}
	}
	if len(got) != 2 || got["web-1"] != "12750m" || got["web-2"] != "7" {
		t.Fatalf("values %v, want web-1=12750m (sum of its 3 series) and web-2=7, nothing for db-1 or other namespaces", got)
	}

	one, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, labels.Everything())
	if err != nil || one.Value.String() != "12750m" {
		t.Fatalf("by name: %v %v", one, err)
	}
	if q := f.prom.Queries.Load(); q != 2 {
		t.Fatalf("%d Prometheus queries for two reads of one namespace, want 2 (value + freshness, once)", q)
	}
}

func TestValuesAreRoundedToMilliUnitsNeverTruncated(t *testing.T) {
	for v, want := range map[float64]string{0.0004: "0", 0.0005: "1m", 2.3456: "2346m", 0.9999: "1", 1e-9: "0", 123456.7894: "123456789m"} {
		if got := metricsapi.Quantity(v); got.String() != want {
			t.Errorf("Quantity(%v) = %s, want %s", v, got.String(), want)
		}
	}
}

func TestStaleSamplesAreNotServed(t *testing.T) {
	now := time.Now()
	series := append(promtest.PodSeries("shop", "fresh", now, 5), promtest.PodSeries("shop", "stale", now.Add(-5*time.Minute), 9)...)
	f := newFixture(t, 2*time.Minute, series, pod("shop", "fresh", map[string]string{"app": "web"}), pod("shop", "stale", map[string]string{"app": "web"}))
	sel, _ := labels.Parse("app=web")
	list, err := f.p.GetMetricBySelector(context.Background(), "shop", sel, podsInfo, labels.Everything())
	if err != nil || len(list.Items) != 1 || list.Items[0].DescribedObject.Name != "fresh" {
		t.Fatalf("= %+v %v, want only the fresh pod", list, err)
	}
	_, err = f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "stale"}, podsInfo, labels.Everything())
	if err == nil || !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "--max-sample-age is 2m0s") {
		t.Fatalf("stale pod: err = %v, want not found naming the max age", err)
	}
}

func TestUnknownMetricNamesWhatExists(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 1), pod("shop", "web-1", nil))
	info := podsInfo
	info.Metric = "flask_http_request_total" // what the seed's own HPA asks for
	_, err := f.p.GetMetricBySelector(context.Background(), "shop", labels.Everything(), info, labels.Everything())
	if err == nil || !apierrors.IsNotFound(err) {
		t.Fatalf("err = %v, want not found", err)
	}
	for _, want := range []string{
		"metric flask_http_request_total is not served for pods",
		"flask_http_request_total is a Prometheus series that rule config.yaml:3 serves as flask_http_request_per_second",
		"metrics for pods: flask_http_request_per_second",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	infos := f.p.ListAllMetrics()
	if len(infos) != 2 || infos[0].Metric != "flask_http_request_per_second" {
		t.Fatalf("ListAllMetrics = %v, want the metric on namespaces and pods", infos)
	}
}

func TestPrometheusDownIsAnErrorThatSaysSo(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 1), pod("shop", "web-1", nil))
	f.prom.Down.Store(true)
	_, err := f.p.GetMetricBySelector(context.Background(), "shop", labels.Everything(), podsInfo, labels.Everything())
	if err == nil || !strings.Contains(err.Error(), "prometheus at "+f.prom.URL) {
		t.Fatalf("err = %v, want one naming Prometheus and its address", err)
	}
}

func TestMetricSelectorNarrowsTheSeries(t *testing.T) {
	now := time.Now()
	series := promtest.PodSeries("shop", "web-1", now, 10, 3) // statuses 200 and 201
	f := newFixture(t, time.Minute, series, pod("shop", "web-1", nil))
	ms, _ := labels.Parse("status=201")
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, ms)
	if err != nil || v.Value.String() != "3" || v.Metric.Selector == nil {
		t.Fatalf("= %+v %v, want 3 (only the status=201 series) with the selector echoed", v, err)
	}
}

func TestNamespaceMetric(t *testing.T) {
	now := time.Now()
	series := append(promtest.PodSeries("shop", "web-1", now, 10), promtest.PodSeries("shop", "web-2", now, 5)...)
	f := newFixture(t, time.Minute, series)
	info := cmprovider.CustomMetricInfo{GroupResource: schema.GroupResource{Resource: "namespaces"}, Metric: "flask_http_request_per_second"}
	// The seed rule has no "sum by": the namespace's value sums every series.
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Name: "shop"}, info, labels.Everything())
	if err != nil || v.Value.String() != "15" || v.DescribedObject.Kind != "Namespace" {
		t.Fatalf("= %+v %v, want 15 for the namespace", v, err)
	}
}

func TestAMetricThatAppearsLaterIsServedWithoutWaitingForTheRelist(t *testing.T) {
	f := newFixture(t, time.Minute, nil, pod("shop", "web-1", nil))
	if len(f.p.ListAllMetrics()) != 0 {
		t.Fatal("metrics listed before any series exists")
	}
	f.prom.Set(promtest.PodSeries("shop", "web-1", time.Now(), 4)...)
	time.Sleep(150 * time.Millisecond) // the catalog is older than RediscoverAfter
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, labels.Everything())
	if err != nil || v.Value.String() != "4" {
		t.Fatalf("= %v %v, want the new series' value after an on-demand discovery", v, err)
	}
}

// A request naming a resource no rule serves is answered from the catalog
// alone: no watch starts for it (one the adapter may not list would cost
// every such request its sync timeout and leave a reflector retrying
// forever).
func TestAMetricNoRuleServesStartsNoWatch(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 4), pod("shop", "web-1", map[string]string{"app": "web"}))
	info := cmprovider.CustomMetricInfo{GroupResource: schema.GroupResource{Resource: "secrets"}, Namespaced: true, Metric: "flask_http_request_per_second"}
	_, err := f.p.GetMetricBySelector(context.Background(), "shop", labels.Everything(), info, labels.Everything())
	if !apierrors.IsNotFound(err) {
		t.Fatalf("secrets/flask_http_request_per_second = %v, want 404", err)
	}
	time.Sleep(100 * time.Millisecond) // a watch would have listed by now
	for _, a := range f.meta.Actions() {
		if a.GetResource().Resource == "secrets" {
			t.Fatalf("a %s of secrets was made for a metric no rule serves", a.GetVerb())
		}
	}
}
