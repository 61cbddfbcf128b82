package metricsapi_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// A discovery that fails (Prometheus away) keeps what the last one found:
// the metric stays listed and HPAs keep asking for it, instead of a 404
// until the next relist.
func TestAFailedDiscoveryKeepsTheCatalog(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 4), pod("shop", "web-1", nil))
	if len(f.p.ListAllMetrics()) != 2 {
		t.Fatalf("listed %v before the failure", f.p.ListAllMetrics())
	}
	f.prom.Down.Store(true)
	f.catalog.Discover(context.Background())
	if got := f.p.ListAllMetrics(); len(got) != 2 {
		t.Fatalf("after a failed discovery: %v, want the metric still listed", got)
	}
	f.prom.Down.Store(false)
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, labels.Everything())
	if err != nil || v.Value.String() != "4" {
		t.Fatalf("= %v %v", v, err)
	}
}

// A request for a missing metric whose caller gives up at once (its
// context cancelled) does not cut the discovery it started short, and the
// catalog it leaves is complete.
func TestACancelledRequestDoesNotCutDiscoveryShort(t *testing.T) {
	f := newFixture(t, time.Minute, nil, pod("shop", "web-1", nil))
	f.prom.Set(promtest.PodSeries("shop", "web-1", time.Now(), 4)...)
	time.Sleep(150 * time.Millisecond) // the catalog is older than RediscoverAfter
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = f.p.GetMetricByName(ctx, types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, labels.Everything())
	deadline := time.Now().Add(5 * time.Second)
	for len(f.p.ListAllMetrics()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := f.catalog.Ready(); err != nil || len(f.p.ListAllMetrics()) != 2 {
		t.Fatalf("catalog after a cancelled request: %v (ready: %v)", f.p.ListAllMetrics(), err)
	}
}

// lagProvider serves the seed's rules and the lag metrics, whose values
// fetch gives.
func lagProvider(t *testing.T, fetch store.FetcherFunc) *metricsapi.Provider {
	t.Helper()
	st := store.New(fetch, store.Options{Fresh: time.Minute})
	cat := catalog.New(seedConfig(t), nil, mapper(), catalog.Options{Extra: []string{lag.MetricLag, lag.MetricLagSeconds}})
	return metricsapi.New(cat, st, mapper(), nil, nil, metricsapi.Options{MaxSampleAge: time.Minute, LagEnabled: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// kafka_consumergroup_lag and kafka_consumergroup_lag_seconds of one
// selector are one computation: an HPA asking for both costs one fetch.
func TestLagAndLagSecondsAreOneFetch(t *testing.T) {
	var fetches atomic.Int64
	p := lagProvider(t, func(ctx context.Context, q store.Query) ([]store.Sample, error) {
		fetches.Add(1)
		lq := q.(lag.Query)
		labels := map[string]string{"consumergroup": lq.Groups[0], "topic": lq.Topics[0]}
		now := time.Now()
		return []store.Sample{
			{Metric: lag.MetricLag, Labels: labels, Value: 250, Timestamp: now},
			{Metric: lag.MetricLagSeconds, Labels: labels, Value: 12.5, Timestamp: now},
		}, nil
	})
	sel, _ := labels.Parse("consumergroup=g,topic=t")
	for metric, want := range map[string]string{lag.MetricLag: "250", lag.MetricLagSeconds: "12500m"} {
		l, err := p.GetExternalMetric(context.Background(), "shop", sel, cmprovider.ExternalMetricInfo{Metric: metric})
		if err != nil || len(l.Items) != 1 || l.Items[0].Value.String() != want || l.Items[0].MetricName != metric {
			t.Fatalf("%s = %+v %v, want %s", metric, l, err, want)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for lag and lag seconds of one group, want 1", n)
	}
}

// An external metric without a fresh value is an error the HPA sees, never
// a 0 it would scale down on: the source answered nothing, or only a value
// older than --max-sample-age.
func TestAnExternalMetricWithoutAFreshValueIsNotFoundNotZero(t *testing.T) {
	for name, age := range map[string]time.Duration{"no sample": -1, "a stale sample": 10 * time.Minute} {
		t.Run(name, func(t *testing.T) {
			p := lagProvider(t, func(ctx context.Context, q store.Query) ([]store.Sample, error) {
				if age < 0 {
					return nil, nil
				}
				lq := q.(lag.Query)
				labels := map[string]string{"consumergroup": lq.Groups[0], "topic": lq.Topics[0]}
				return []store.Sample{{Metric: lag.MetricLag, Labels: labels, Value: 250, Timestamp: time.Now().Add(-age)}}, nil
			})
			sel, _ := labels.Parse("consumergroup=g,topic=t")
			l, err := p.GetExternalMetric(context.Background(), "shop", sel, cmprovider.ExternalMetricInfo{Metric: lag.MetricLag})
			if !apierrors.IsNotFound(err) || l != nil {
				t.Fatalf("GetExternalMetric = %+v, %v; want not found (no fresh value) and no list", l, err)
			}
		})
	}
}

// A sample without a timestamp cannot be shown to be fresh: not served.
func TestASampleWithoutATimestampIsNotServed(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Time{}, 4), pod("shop", "web-1", nil))
	_, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, labels.Everything())
	if !apierrors.IsNotFound(err) {
		t.Fatalf("err = %v, want not found (no fresh value)", err)
	}
}

func TestHugeValuesKeepTheirMagnitude(t *testing.T) {
	for v, want := range map[float64]string{1e19: "10e18", -3.5e20: "-350e18", 9.2e18: "9200e15", math.MaxFloat64 / 1e300: "179769313486231e-6"} {
		q := metricsapi.Quantity(v)
		if got := q.AsApproximateFloat64(); math.Abs(got-v)/math.Abs(v) > 1e-9 {
			t.Errorf("Quantity(%g) = %s (%g), want %g (%s)", v, q.String(), got, v, want)
		}
	}
}

func TestUnknownMetricsDoNotBecomeSelfMetricSeries(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 4), pod("shop", "web-1", nil))
	for i := range 20 {
		info := podsInfo
		info.Metric = "invented_" + strings.Repeat("x", i)
		_, _ = f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, info, labels.Everything())
	}
	if _, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "shop", Name: "web-1"}, podsInfo, labels.Everything()); err != nil {
		t.Fatal(err)
	}
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "metric" {
					names[l.GetValue()] = true
				}
			}
		}
	}
	if len(names) != 2 || !names["<unknown>"] || !names["flask_http_request_per_second"] {
		t.Fatalf("self-metric label values %v: twenty invented names must not become twenty series", names)
	}
}

// The first requests for a resource arrive together (every HPA after the
// adapter starts): all wait for the one watch cache to sync, none is
// refused.
func TestConcurrentFirstRequestsAllWaitForTheCache(t *testing.T) {
	var objs []runtime.Object
	var series []promtest.Series
	for i := range 50 {
		name := fmt.Sprintf("web-%02d", i)
		objs = append(objs, pod("shop", name, map[string]string{"app": "web"}))
		series = append(series, promtest.PodSeries("shop", name, time.Now(), 1)...)
	}
	f := newFixture(t, time.Minute, series, objs...)
	sel, _ := labels.Parse("app=web")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l, err := f.p.GetMetricBySelector(context.Background(), "shop", sel, podsInfo, labels.Everything()); err != nil || len(l.Items) != 50 {
				errs <- fmt.Errorf("%v (%v)", err, l)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A caller that gives up while the cache syncs does not stop it: the next
// caller is served.
func TestACancelledFirstRequestDoesNotStopTheWatch(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 4), pod("shop", "web-1", map[string]string{"app": "web"}))
	sel, _ := labels.Parse("app=web")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = f.p.GetMetricBySelector(ctx, "shop", sel, podsInfo, labels.Everything())
	l, err := f.p.GetMetricBySelector(context.Background(), "shop", sel, podsInfo, labels.Everything())
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("after a cancelled first request: %v %v", l, err)
	}
}

// A rules reload while Prometheus is away keeps the catalog serving what
// it found (the readiness probe's source check): before, the reload marked
// the catalog unloaded and the only adapter pod left its Service, lag
// included.
func TestAReloadWhilePrometheusIsAwayKeepsServing(t *testing.T) {
	f := newFixture(t, time.Minute, promtest.PodSeries("shop", "web-1", time.Now(), 4), pod("shop", "web-1", nil))
	if err := f.catalog.Serving(); err != nil {
		t.Fatalf("before the outage: %v", err)
	}
	f.prom.Down.Store(true)
	f.catalog.SetConfig(context.Background(), seedConfig(t))
	if err := f.catalog.Serving(); err != nil {
		t.Fatalf("after a reload during the outage: %v, want the catalog still serving", err)
	}
	if err := f.catalog.Reachable(); err == nil {
		t.Fatal("Reachable says Prometheus answered while it is down")
	}
	if got := f.p.ListAllMetrics(); len(got) != 2 {
		t.Fatalf("listed %v after the reload, want the metrics kept", got)
	}
}
