package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkPodsPerSelector sweeps the number of pods one HPA's selector
// matches — 10, 100, 1,000, 10,000, each in a namespace of its own, all
// present at once (the adapter's watch cache holds 11,110 pods) — with the
// seed's rule over three series per pod in the real Prometheus. For each
// size: p50/p99 of the HPA's request through the aggregation layer (one
// caller), the adapter's CPU per request, Prometheus queries per second
// the adapter sends while the requests run, and the adapter's memory.
//
//	go test -run '^$' -bench PodsPerSelector -benchtime 1x -timeout 40m ./e2e/clustertest/
func BenchmarkPodsPerSelector(b *testing.B) {
	const seriesPerPod = 3
	sizes := []int{10, 100, 1000, 10000}
	deploySystem(b)
	ctx := context.Background()
	fast := fastClient(b)
	nss := make([]string, len(sizes))
	for k, n := range sizes {
		nss[k] = namespace(b)
		b.Logf("creating %d pods in %s", n, nss[k])
		parallel(b, n, func(i int) error {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sel-%05d", i), Labels: map[string]string{"app": "sel"}}, Spec: pendingPodSpec()}
			_, err := fast.CoreV1().Pods(nss[k]).Create(ctx, p, metav1.CreateOptions{})
			return err
		})
	}
	standIn(b, func(w io.Writer, elapsed float64) {
		for k, n := range sizes {
			for i := range n {
				for s := range seriesPerPod {
					fmt.Fprintf(w, "flask_http_request_total{namespace=%q,pod=\"sel-%05d\",method=\"POST\",path=\"/buy\",status=\"%d\"} %g\n", nss[k], i, 200+s, float64(i%50+1)/10*elapsed)
				}
			}
		}
	})
	b.Logf("waiting 130 s for rate(...[2m]) to cover the stand-in's series")
	time.Sleep(130 * time.Second)

	viaAPI := aggregatedClient(b)
	pid := ourAdapterPID(b)
	for k, n := range sizes {
		path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + nss[k] + "/pods/*/flask_http_request_per_second?" + url.Values{"labelSelector": {"app=sel"}}.Encode()
		// Every pod has a value before anything is timed.
		var last error
		for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
			var raw []byte
			if raw, last = viaAPI(path); last == nil {
				var l metricValueList
				if last = json.Unmarshal(raw, &l); last == nil && len(l.Items) != n {
					last = fmt.Errorf("%d values for %d pods", len(l.Items), n)
				}
			}
			if last == nil {
				break
			}
		}
		if last != nil {
			b.Fatalf("%d pods: %v", n, last)
		}
		requests := max(20, min(200, 200000/n))
		before, cpu0, t0 := adapterCounters(b), cpuSecondsOf(b, pid), time.Now()
		d := measure(b, 1, requests, func() error { _, err := viaAPI(path); return err })
		elapsed := time.Since(t0).Seconds()
		after, cpu1 := adapterCounters(b), cpuSecondsOf(b, pid)
		name := strconv.Itoa(n) + "-pods"
		b.ReportMetric(ms(pct(d, 0.50)), name+"-p50-ms")
		b.ReportMetric(ms(pct(d, 0.99)), name+"-p99-ms")
		b.ReportMetric(float64(requests)/elapsed, name+"-requests/s")
		// CPU per second is what a capacity plan reads; per request is
		// what grows with the pods (one caller asks back to back, so the
		// two differ by the request rate).
		b.ReportMetric((cpu1-cpu0)/elapsed, name+"-adapter-cores")
		b.ReportMetric((cpu1-cpu0)/float64(requests)*1000, name+"-adapter-cpu-ms/request")
		b.ReportMetric((after["prometheus_custom"]+after["prometheus_freshness"]-before["prometheus_custom"]-before["prometheus_freshness"])/elapsed, name+"-prometheus-queries/s")
		b.ReportMetric(float64(rssOf(b, pid))/(1<<20), name+"-adapter-rss-MiB")
	}
}
