package promsource_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// prometheusBinary is the Prometheus the tools script built.
func prometheusBinary(t testing.TB) string {
	t.Helper()
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "tools.sh"), "path", "prometheus").Output()
	path := strings.TrimSpace(string(out))
	if _, serr := os.Stat(path); err != nil || serr != nil {
		realdeps.Missing(t, "needs Prometheus at %q: run scripts/tools.sh ensure prometheus (make test does)", path)
	}
	return path
}

// The flags every Prometheus of the project runs with (scripts/infra.sh,
// manifests/monitoring): created-timestamp-zero-ingestion stores a zero at
// each counter's creation time, so a series that first appears already
// above 0 still counts as an increase from 0.
var prometheusFlags = []string{"--enable-feature=created-timestamp-zero-ingestion"}

// startWebServers starts one web server process per pod name and returns
// each pod's address. env is passed to every process.
func startWebServers(t *testing.T, pods []string, env ...string) map[string]string {
	t.Helper()
	addrs := map[string]string{}
	for _, pod := range pods {
		addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
		addrs[pod] = addr
		testproc.Start(t, "webserver", append([]string{"HTTP_ADDR=" + addr}, env...)...)
		testproc.WaitHTTP(t, "http://"+addr+"/healthz", 200, 30*time.Second)
	}
	return addrs
}

// startPrometheus runs the real Prometheus scraping each pod's address
// every interval, labelled with namespace "itest" and the pod's name as
// the cluster's pod discovery labels them, and returns its URL.
func startPrometheus(t *testing.T, addrs map[string]string, interval string, flags ...string) string {
	t.Helper()
	prom := prometheusBinary(t)
	dir := t.TempDir()
	type target struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	var targets []target
	for pod, addr := range addrs {
		targets = append(targets, target{Targets: []string{addr}, Labels: map[string]string{"namespace": "itest", "pod": pod}})
	}
	b, _ := json.Marshal(targets)
	if err := os.WriteFile(filepath.Join(dir, "targets.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`
global: {scrape_interval: %s}
scrape_configs:
  - job_name: pods
    file_sd_configs: [{files: [%q], refresh_interval: 1s}]
`, interval, filepath.Join(dir, "targets.json"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	args := append([]string{"--config.file=" + filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + promAddr}, flags...)
	cmd := exec.Command(prom, args...)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testproc.WaitHTTP(t, "http://"+promAddr+"/-/ready", 200, 60*time.Second)
	return "http://" + promAddr
}

// seedRule is the seed guide's rule with the rate window replaced.
func seedRule(t *testing.T, window string) *rules.Config {
	t.Helper()
	seed, err := os.ReadFile("../rules/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rcfg, err := rules.Parse("seed.yaml", []byte(strings.Replace(string(seed), "[2m]", "["+window+"]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	return rcfg
}

// TestRatesFromRealPrometheusMatchTheLoadSent scrapes three real web
// server processes, labelled as pods through file-based discovery, sends
// each a known request rate, and checks that the seed rule yields each
// pod's rate within 10%.
func TestRatesFromRealPrometheusMatchTheLoadSent(t *testing.T) {
	rates := map[string]float64{"web-0": 20, "web-1": 40, "web-2": 60}
	// No Kafka: the requests below are rejected with 400 before it is
	// needed, and every request counts toward the rate.
	addrs := startWebServers(t, []string{"web-0", "web-1", "web-2"}, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
	promURL := startPrometheus(t, addrs, "1s", prometheusFlags...)

	// Paced load: each pod gets its own rate for the whole window. What
	// counts is what was really sent (a ticker on a busy machine may drop
	// ticks), so each request's time is kept.
	ctx, stop := context.WithTimeout(context.Background(), 25*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := map[string][]time.Time{}
	for pod, rate := range rates {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					resp, err := http.Post("http://"+addrs[pod]+"/buy", "application/json", strings.NewReader(`{}`))
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						mu.Lock()
						sent[pod] = append(sent[pod], time.Now())
						mu.Unlock()
					}
				}
			}
		}()
	}
	time.Sleep(20 * time.Second) // enough scrapes into the rate window, load still on

	// The seed rule with a 15 s window instead of 2 min: rate() averages
	// over its whole window, so with [2m] the test would wait two minutes
	// for the window to fill with load.
	rcfg := seedRule(t, "15s")
	src, err := promsource.New(promURL, 10*time.Second, selfmetrics.New())
	if err != nil {
		t.Fatal(err)
	}
	cat, err := src.Discover(context.Background(), rcfg)
	if err != nil {
		t.Fatal(err)
	}
	ms := cat.Custom["flask_http_request_per_second"]
	if len(ms) != 1 || ms[0].Series != "flask_http_request_total" {
		t.Fatalf("discovered %+v, want flask_http_request_per_second from flask_http_request_total", cat.Custom)
	}
	fetched := time.Now()
	samples, err := src.FetchCustom(context.Background(), promsource.CustomQuery{Metric: ms[0], Resource: schema.GroupResource{Resource: "pods"}, Namespace: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(samples) != 3 {
		t.Fatalf("samples %+v, want one per pod", samples)
	}
	for _, s := range samples {
		// The rate window ends at the newest scrape before the fetch.
		var n int
		for _, at := range sent[s.Object] {
			if at.After(s.Timestamp.Add(-15*time.Second)) && !at.After(s.Timestamp) {
				n++
			}
		}
		want := float64(n) / 15
		if d := (s.Value - want) / want; d > 0.10 || d < -0.10 {
			t.Errorf("%s: %.2f req/s, sent %.2f/s in the window (paced at %.0f) (%.1f%% off)", s.Object, s.Value, want, rates[s.Object], 100*d)
		} else {
			t.Logf("%s: %.2f req/s, sent %.2f/s in the window (paced at %.0f)", s.Object, s.Value, want, rates[s.Object])
		}
		if age := fetched.Sub(s.Timestamp); age < 0 || age > 3*time.Second {
			t.Errorf("%s: sample timestamp %v is not its newest scrape (age %s)", s.Object, s.Timestamp, age)
		}
	}
}
