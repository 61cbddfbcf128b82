package promsource_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// exporter serves 10 pods' request counters and `unrelated` other series.
func exporter(unrelated int) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		var b strings.Builder
		for p := range 10 {
			fmt.Fprintf(&b, "flask_http_request_total{namespace=\"bench\",pod=\"web-%d\",method=\"POST\",status=\"201\",path=\"/buy\"} %d\n", p, 1000+p)
		}
		for i := range unrelated {
			fmt.Fprintf(&b, "unrelated_metric_%d{instance_id=\"%d\",shard=\"%d\"} %d\n", i%500, i, i%7, i)
		}
		_, _ = w.Write([]byte(b.String()))
	}))
}

// BenchmarkMemoryWithUnrelatedSeries measures the adapter's heap after
// discovery and fetches against a real Prometheus holding the seed's
// series for 10 pods, with and without 100,000 unrelated series. Discovery
// asks Prometheus for matching metric names only, so the unrelated series
// never reach the adapter.
//
//	go test -run '^$' -bench MemoryWithUnrelatedSeries -benchtime 1x ./internal/promsource/
func BenchmarkMemoryWithUnrelatedSeries(b *testing.B) {
	for _, unrelated := range []int{0, 100_000} {
		b.Run(fmt.Sprintf("unrelated=%d", unrelated), func(b *testing.B) {
			prom := promtest.Binary(b)
			exp := exporter(unrelated)
			defer exp.Close()
			dir := b.TempDir()
			cfg := fmt.Sprintf("global: {scrape_interval: 2s}\nscrape_configs:\n  - job_name: e\n    honor_labels: true\n    static_configs: [{targets: [%q]}]\n", strings.TrimPrefix(exp.URL, "http://"))
			_ = os.WriteFile(filepath.Join(dir, "p.yml"), []byte(cfg), 0o644)
			addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(b))
			cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "p.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			testproc.WaitHTTP(b, "http://"+addr+"/-/ready", 200, 60*time.Second)
			src, _ := promsource.New(promsource.ClientOptions{URL: "http://" + addr, Timeout: 30 * time.Second}, nil)
			seed, _ := os.ReadFile("../rules/testdata/seed.yaml")
			rcfg, _ := rules.Parse("seed.yaml", seed)
			var d promsource.RuleDiscovery
			testproc.Eventually(b, 60*time.Second, "series scraped", func() error {
				d = src.DiscoverRule(context.Background(), rcfg.Rules[0])
				if d.Err == nil && len(d.Metrics) == 0 {
					return fmt.Errorf("nothing discovered yet")
				}
				return d.Err
			})
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for range max(b.N, 20) {
				d = src.DiscoverRule(context.Background(), rcfg.Rules[0])
				if _, err := src.QueryCustom(context.Background(), promsource.CustomQuery{Metric: d.Metrics[0],
					Resource: schema.GroupResource{Resource: "pods"}, Namespace: "bench"}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc)/(1<<20), "heap-MiB")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(max(b.N, 20))/1024, "alloc-KiB/cycle")
		})
	}
}
