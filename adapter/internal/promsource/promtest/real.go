package promtest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// Flags are the flags every Prometheus of the project runs with
// (scripts/infra.sh, manifests/monitoring): created-timestamp-zero-ingestion
// stores a zero at each counter's creation time, so a series that first
// appears already above 0 still counts as an increase from 0.
var Flags = []string{"--enable-feature=created-timestamp-zero-ingestion"}

// Binary is the real Prometheus the tools script built; without it the
// test stops (see realdeps).
func Binary(t testing.TB) string {
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

// StartWebServers starts one web server process per pod name and returns
// each pod's address. env is passed to every process.
func StartWebServers(t *testing.T, pods []string, env ...string) map[string]string {
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

// StartPrometheus runs the real Prometheus scraping each pod's address
// every interval, labelled with namespace "itest" and the pod's name as
// the cluster's pod discovery labels them, and returns its URL. extra is
// added to the configuration's top level (e.g. a rule_files line).
func StartPrometheus(t *testing.T, addrs map[string]string, interval string, flags ...string) string {
	t.Helper()
	prom := Binary(t)
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
