package clustertest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// TestSeedHPAIsToldWhichMetricToUse applies the seed guide's hpa-http.yaml
// unchanged (but for its namespace) to a throwaway Deployment: it asks for
// flask_http_request_total, a Prometheus series no rule serves under that
// name, and kubectl describe hpa must show the adapter's answer naming
// flask_http_request_per_second.
func TestSeedHPAIsToldWhichMetricToUse(t *testing.T) {
	deploySystem(t)
	const ns = "seed-hpa-http"
	kubectl(t, "create", "namespace", ns)
	t.Cleanup(func() { _, _ = execKubectl("delete", "namespace", ns, "--wait=false") })
	kubectl(t, "-n", ns, "create", "deployment", "customer-web-server", "--image=purchase-system/webserver:dev")
	seed, err := os.ReadFile("testdata/seed-hpa-http.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(strings.ReplaceAll(string(seed), "namespace: purchase-system", "namespace: "+ns))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	var describe string
	testproc.Eventually(t, 90*time.Second, "the HPA names the metric to use", func() error {
		describe, _ = execKubectl("-n", ns, "describe", "hpa", "customer-web-server-hpa-http")
		if !strings.Contains(describe, "serves as flask_http_request_per_second") {
			return fmt.Errorf("kubectl describe hpa:\n%s", describe)
		}
		return nil
	})
	for _, l := range strings.Split(describe, "\n") {
		if strings.Contains(l, "flask_http_request_per_second") {
			t.Logf("kubectl describe hpa: %s", strings.TrimSpace(l))
			break
		}
	}
}
