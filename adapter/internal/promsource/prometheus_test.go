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

// TestRatesFromRealPrometheusMatchTheLoadSent scrapes three real web
// server processes, labelled as pods through file-based discovery, sends
// each a known request rate, and checks that the seed rule yields each
// pod's rate within 10%.
func TestRatesFromRealPrometheusMatchTheLoadSent(t *testing.T) {
	prom := prometheusBinary(t)
	dir := t.TempDir()
	rates := map[string]float64{"web-0": 20, "web-1": 40, "web-2": 60}

	type target struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	var targets []target
	addrs := map[string]string{}
	for pod := range rates {
		port := testproc.FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		addrs[pod] = addr
		// No Kafka: the requests below are rejected with 400 before it is
		// needed, and every request counts toward the rate.
		testproc.Start(t, "webserver", "HTTP_ADDR="+addr, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
		testproc.WaitHTTP(t, "http://"+addr+"/healthz", 200, 30*time.Second)
		targets = append(targets, target{Targets: []string{addr}, Labels: map[string]string{"namespace": "itest", "pod": pod}})
	}
	b, _ := json.Marshal(targets)
	if err := os.WriteFile(filepath.Join(dir, "targets.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: pods
    file_sd_configs: [{files: [%q], refresh_interval: 1s}]
`, filepath.Join(dir, "targets.json"))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testproc.WaitHTTP(t, "http://"+promAddr+"/-/ready", 200, 60*time.Second)

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
	seed, err := os.ReadFile("../rules/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rcfg, err := rules.Parse("seed.yaml", []byte(strings.Replace(string(seed), "[2m]", "[15s]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	src, err := promsource.New("http://"+promAddr, 10*time.Second, selfmetrics.New())
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
