package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// manifests/monitoring — the Prometheus a cluster without one gets, which
// the kind overlay applies — runs on the local node from the image built
// here (the Prometheus binary of the tools cache under upstream's name and
// layout): it becomes Ready and scrapes the web servers through its
// kubernetes_sd. Removed after: the local overlay's adapter reads the
// host's Prometheus.
func TestInClusterPrometheusScrapesTheServices(t *testing.T) {
	deploySystem(t)
	kubectl(t, "apply", "-k", repoRoot+"/manifests/monitoring")
	t.Cleanup(func() {
		for _, obj := range []string{"deployment/prometheus", "service/prometheus", "configmap/prometheus-config", "networkpolicy/prometheus", "serviceaccount/prometheus"} {
			_, _ = execKubectl("-n", "monitoring", "delete", obj, "--ignore-not-found")
		}
		_, _ = execKubectl("delete", "clusterrole,clusterrolebinding", "purchase-system-prometheus", "--ignore-not-found")
	})
	kubectl(t, "-n", "monitoring", "rollout", "status", "deployment/prometheus", "--timeout=120s")
	pods, err := readyPods(context.Background(), "monitoring", "app=prometheus")
	if err != nil || len(pods) != 1 {
		t.Fatalf("prometheus pods: %d (%v)", len(pods), err)
	}
	url := "http://" + pods[0].Status.PodIP + ":9090/api/v1/targets?state=active"
	testproc.Eventually(t, 90*time.Second, "the web servers scraped and up", func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body struct {
			Data struct {
				ActiveTargets []struct {
					Labels map[string]string `json:"labels"`
					Health string            `json:"health"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return err
		}
		up := 0
		for _, tg := range body.Data.ActiveTargets {
			if tg.Labels["app"] == "customer-web-server" && tg.Health == "up" {
				up++
			}
		}
		if up == 0 {
			return fmt.Errorf("no customer-web-server target up among %d", len(body.Data.ActiveTargets))
		}
		return nil
	})
}
