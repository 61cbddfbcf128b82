package clustertest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// TestExplainEndpointOnlyThroughPortForward: the running adapter explains
// its rules and a request on its debug endpoint, which listens on the
// pod's loopback: kubectl port-forward (which RBAC guards) reaches it,
// the pod's own address does not.
func TestExplainEndpointOnlyThroughPortForward(t *testing.T) {
	deploySystem(t)
	pods, err := readyPods(context.Background(), "monitoring", "app=purchase-metrics-adapter")
	if err != nil || len(pods) != 1 {
		t.Fatalf("adapter pod: %v", err)
	}
	if c, err := net.DialTimeout("tcp", pods[0].Status.PodIP+":6060", 2*time.Second); err == nil {
		c.Close()
		t.Fatal("the explain endpoint answers on the pod's own address; it must listen on loopback only")
	}

	local := testproc.FreePort(t)
	cmd := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "-n", "monitoring", "port-forward", "deploy/purchase-metrics-adapter", fmt.Sprintf("%d:6060", local))
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Forwarding from") {
				close(ready)
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("kubectl port-forward did not start")
	}
	get := func(q string) string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/explain%s", local, q))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	rules := get("")
	if !strings.Contains(rules, "rule config.yaml:5") || !strings.Contains(rules, "flask_http_request_total → flask_http_request_per_second") {
		t.Fatalf("rules explained by the running adapter:\n%s", rules)
	}
	req := get("?" + url.Values{"namespace": {"purchase-system"}, "resource": {"pods"}, "metric": {"flask_http_request_per_second"},
		"selector": {"app=customer-web-server"}}.Encode())
	for _, want := range []string{`objects matching "app=customer-web-server": 2`, "PromQL:    rate(flask_http_request_total{namespace=\"purchase-system\"}[2m])", "the HPA gets:"} {
		if !strings.Contains(req, want) {
			t.Errorf("request explained without %q:\n%s", want, req)
		}
	}
}
