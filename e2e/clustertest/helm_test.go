package clustertest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// helmRunner runs the helm the tools cache holds (built from source),
// with state directories of the test's own.
func helmRunner(t *testing.T) func(args ...string) (string, error) {
	t.Helper()
	bin, err := exec.Command(filepath.Join(repoRoot, "scripts", "tools.sh"), "path", "helm").Output()
	if err != nil {
		t.Fatalf("tools.sh path helm: %v", err)
	}
	env := append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	return func(args ...string) (string, error) {
		cmd := exec.Command(strings.TrimSpace(string(bin)), append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Env = env
		// Standard output only, unless it fails: helm logs to standard
		// error (the chart's crds/ link to the manifests' CRD is noted
		// there), and a rendering is applied as it comes.
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out) + stderr.String(), err
		}
		return string(out), nil
	}
}

// A prometheus-adapter user's values file (docs/migration) installs this
// adapter's chart as it is: helm lint passes, the rendering is valid to
// the API server, what the adapter does not do is refused with a message,
// and helm install serves the seed metric through the aggregation layer.
// The chart's APIServices take the metrics APIs over for the test; the
// local overlay's are restored after.
func TestHelmChartTakesPrometheusAdapterValues(t *testing.T) {
	deploySystem(t)
	helm := helmRunner(t)
	chart := filepath.Join(repoRoot, "charts", "purchase-metrics-adapter")
	values := filepath.Join(repoRoot, "docs", "migration", "prometheus-adapter-values.yaml")
	for _, v := range [][]string{nil, {"-f", values}} {
		if out, err := helm(append([]string{"lint", "--strict", chart}, v...)...); err != nil {
			t.Fatalf("helm lint %v: %v\n%s", v, err, out)
		}
	}
	for value, want := range map[string]string{
		"rules.resource.cpu.containerQuery=x": "rules.resource: resource metrics",
		"psp.create=true":                     "psp.create: PodSecurityPolicy was removed",
		"tls.enable=true":                     "tls.enable: tls.ca, tls.certificate and tls.key are all needed",
		"someValueThisChartLacks=1":           "additional properties 'someValueThisChartLacks' not allowed",
	} {
		out, err := helm("template", "x", chart, "-f", values, "--set", value)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("--set %s: %v, want a refusal saying %q:\n%s", value, err, want, out)
		}
	}

	// kafka.existingSecret: the Kafka secrets as a mounted file, never as
	// an argument the Deployment shows.
	withSecret, err := helm("template", "x", chart, "--show-only", "templates/deployment.yaml",
		"--set", "kafka.bootstrapServers=kafka:9092", "--set", "kafka.existingSecret=adapter-kafka")
	if err != nil {
		t.Fatalf("helm template with kafka.existingSecret: %v\n%s", err, withSecret)
	}
	for _, want := range []string{"- --kafka-config-file=/etc/adapter-kafka/kafka.properties", "mountPath: /etc/adapter-kafka", "secretName: adapter-kafka"} {
		if !strings.Contains(withSecret, want) {
			t.Errorf("kafka.existingSecret: the Deployment lacks %q:\n%s", want, withSecret)
		}
	}

	// rules.default: prometheus-adapter's chart's six rules, by their
	// name.matches (its templates/configmap.yaml).
	defaults, err := helm("template", "x", chart, "--show-only", "templates/configmap.yaml")
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, defaults)
	}
	for _, m := range []string{`matches: ^container_(.*)_seconds_total$`, `matches: ^container_(.*)_total$`, `matches: ^container_(.*)$`,
		`matches: ""`, `matches: ^(.*)_total$`, `matches: ^(.*)_seconds_total$`} {
		if strings.Count(defaults, m+"\n") != 1 {
			t.Errorf("rules.default: %q appears %d times, want once:\n%s", m, strings.Count(defaults, m+"\n"), defaults)
		}
	}

	const ns, release = "helm-adapter", "pa"
	kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() { _, _ = execKubectl("delete", "namespace", ns, "--wait=false") })
	// The node pulls the adapter by the digest the local registry holds.
	digest := pinnedDigest(t, "purchase-system/adapter")
	set := []string{"-f", values, "--set", "prometheus.url=http://10.88.0.1", "--set", "image.tag=" + digest}
	rendered, err := helm(append([]string{"template", release, chart, "-n", ns}, set...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, rendered)
	}
	file := filepath.Join(t.TempDir(), "rendered.yaml")
	if err := os.WriteFile(file, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "--dry-run=server", "-f", file)

	// The chart owns the APIServices it installs: the local overlay's go
	// for the test and come back at the end.
	restore := func() {
		_, _ = helm("uninstall", release, "-n", ns, "--wait")
		kubectl(t, "apply", "-k", filepath.Join(repoRoot, systemOverlay))
		deploySystem(t)
	}
	kubectl(t, "delete", "apiservice", "v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io")
	t.Cleanup(restore)
	if out, err := helm(append([]string{"install", release, chart, "-n", ns, "--wait", "--timeout", "3m"}, set...)...); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	testproc.Eventually(t, 60*time.Second, "the chart's APIServices available", func() error {
		out, err := execKubectl("get", "apiservice", "v1beta2.custom.metrics.k8s.io", "-o", `jsonpath={.spec.service.namespace} {.status.conditions[?(@.type=="Available")].status}`)
		if err != nil || strings.TrimSpace(out) != ns+" True" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})

	pods, err := readyPods(context.Background(), "purchase-system", "app=customer-web-server")
	if err != nil || len(pods) == 0 {
		t.Fatalf("no ready web server to load: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		for ctx.Err() == nil {
			for _, p := range pods {
				resp, err := http.Post("http://"+p.Status.PodIP+":8080/buy", "application/json", strings.NewReader(`{"username":"helm","userid":"helm","price":1}`))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_per_second?labelSelector=" + url.QueryEscape("app=customer-web-server")
	testproc.Eventually(t, 120*time.Second, "the seed metric served by the chart's adapter", func() error {
		l, raw, err := rawJSON(path)
		if err != nil {
			return fmt.Errorf("%v: %s", err, raw)
		}
		if len(l.Items) == 0 {
			return fmt.Errorf("no values: %s", raw)
		}
		return nil
	})
	// prometheus-adapter's default rules are served too (rules.default).
	out, err := execKubectl("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2")
	if err != nil || !strings.Contains(out, `"name":"pods/`) {
		t.Errorf("discovery: %v %.300s", err, out)
	}
}

// pinnedDigest is the digest cluster up pinned an image to.
func pinnedDigest(t *testing.T, image string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "manifests", "generated", "images", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "- name: "+image+"\n")
	if !ok {
		t.Fatalf("%s is not pinned:\n%s", image, b)
	}
	_, rest, _ = strings.Cut(rest, "digest: ")
	digest, _, _ := strings.Cut(rest, "\n")
	return strings.TrimSpace(digest)
}
