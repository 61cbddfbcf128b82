package metricsapi_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
)

// BenchmarkSelectorRequest measures a pods/* request with a label
// selector (what the HPA sends) at 10, 100 and 1,000 pods, with the value
// fresh in the store: selector resolution from the watch cache, the store
// read, and building the response. It reports p50 and p99.
//
//	go test -run '^$' -bench SelectorRequest ./internal/provider/
func BenchmarkSelectorRequest(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			now := time.Now()
			var series []promtest.Series
			var objs []runtime.Object
			for i := range n {
				name := fmt.Sprintf("web-%04d", i)
				// Three series per pod, as the seed's metric has.
				series = append(series, promtest.PodSeries("shop", name, now, 1, 2, 3)...)
				objs = append(objs, pod("shop", name, map[string]string{"app": "web"}))
			}
			f := newFixture(b, time.Hour, series, objs...)
			sel, _ := labels.Parse("app=web")
			ctx := context.Background()
			if l, err := f.p.GetMetricBySelector(ctx, "shop", sel, podsInfo, labels.Everything()); err != nil || len(l.Items) != n {
				b.Fatalf("warm-up: %v items, err %v", l, err)
			}
			durations := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				l, err := f.p.GetMetricBySelector(ctx, "shop", sel, podsInfo, labels.Everything())
				durations = append(durations, time.Since(t0))
				if err != nil || len(l.Items) != n {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			slices.Sort(durations)
			b.ReportMetric(float64(durations[len(durations)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(durations[len(durations)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkConcurrentIdenticalRequests sends 50 concurrent identical
// requests against a store with nothing fresh and reports how many
// Prometheus queries each burst cost (a value fetch is two queries: the
// rate and the samples' timestamps).
func BenchmarkConcurrentIdenticalRequests(b *testing.B) {
	now := time.Now()
	var series []promtest.Series
	var objs []runtime.Object
	for i := range 100 {
		name := fmt.Sprintf("web-%03d", i)
		series = append(series, promtest.PodSeries("shop", name, now, 5)...)
		objs = append(objs, pod("shop", name, map[string]string{"app": "web"}))
	}
	f := newFixture(b, time.Hour, series, objs...)
	sel, _ := labels.Parse("app=web")
	var total int64
	for i := range b.N {
		f.store.Reset() // cold store each burst
		before := f.prom.Queries.Load()
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := f.p.GetMetricBySelector(context.Background(), "shop", sel, podsInfo, labels.Everything()); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		total += f.prom.Queries.Load() - before
		_ = i
	}
	b.ReportMetric(float64(total)/float64(b.N), "prom-queries/50-requests")
}
