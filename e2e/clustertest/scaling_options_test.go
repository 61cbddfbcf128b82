package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// The consumer's HPA carries scaleUp.tolerance 0 (no dead band on the way
// up): the API server of v1.37.2 keeps the field, so the feature is on
// (a disabled gate drops it silently).
func TestConsumerScalesUpWithoutADeadBand(t *testing.T) {
	deploySystem(t)
	h, err := client.AutoscalingV2().HorizontalPodAutoscalers("purchase-system").Get(context.Background(), "customer-management-api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := h.Spec.Behavior
	if b == nil || b.ScaleUp == nil || b.ScaleUp.Tolerance == nil || !b.ScaleUp.Tolerance.IsZero() {
		t.Fatalf("scaleUp %+v: want tolerance 0 kept by the API server", b)
	}
	if b.ScaleDown != nil && b.ScaleDown.Tolerance != nil {
		t.Errorf("scaleDown.tolerance %s: want the default 10 %% on the way down", b.ScaleDown.Tolerance)
	}
}

// components/scale-to-zero end to end: idle, the consumers go to 0
// replicas while the management API (reads and Idempotency-Keys) stays;
// a purchase with an Idempotency-Key is accepted and a read answered
// while no consumer runs, and the purchase wakes one (lag 1 → 1 replica),
// which stores it once; the key's retry answers that purchase; the lag
// drains to 0. The overlay is restored after.
func TestConsumersScaleToZeroWhileKeysAndReadsAreServed(t *testing.T) {
	deploySystem(t)
	dir := t.TempDir()
	// The cluster tests' overlay with the component, and short windows so
	// the test does not wait the seed's five minutes.
	// kustomize takes no absolute roots: the paths are relative to dir.
	rel := func(p string) string {
		r, err := filepath.Rel(dir, filepath.Join(repoRoot, p))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [`+rel(systemOverlay)+`]
components: [`+rel("manifests/components/scale-to-zero")+`]
patches:
  - target: {kind: HorizontalPodAutoscaler, name: purchase-consumer}
    patch: |-
      - {op: replace, path: /spec/behavior/scaleDown/stabilizationWindowSeconds, value: 0}
      - {op: replace, path: /spec/behavior/scaleUp/stabilizationWindowSeconds, value: 0}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "-k", dir)
	t.Cleanup(func() {
		kubectl(t, "-n", "purchase-system", "delete", "--ignore-not-found", "deployment/purchase-consumer",
			"hpa/purchase-consumer", "networkpolicy/purchase-consumer", "networkpolicy/kafka-from-purchase-consumer",
			"networkpolicy/postgres-from-purchase-consumer")
		kubectl(t, "apply", "-k", filepath.Join(repoRoot, systemOverlay))
		waitReplicas(t, "purchase-system", "app=customer-management-api", 1)
	})
	ctx := context.Background()
	consumers := func() (int32, error) {
		d, err := client.AppsV1().Deployments("purchase-system").Get(ctx, "purchase-consumer", metav1.GetOptions{})
		if err != nil {
			return -1, err
		}
		if d.Spec.Replicas == nil {
			return -1, fmt.Errorf("no replica count yet")
		}
		return *d.Spec.Replicas, nil
	}
	// The API restarts with ROLE=api; the old pods (which consume) go.
	testproc.Eventually(t, 120*time.Second, "the management API serving without consuming", func() error {
		pods, err := readyPods(ctx, "purchase-system", "app=customer-management-api")
		if err != nil {
			return err
		}
		all, err := client.CoreV1().Pods("purchase-system").List(ctx, metav1.ListOptions{LabelSelector: "app=customer-management-api"})
		if err != nil {
			return err
		}
		if len(pods) == 0 || len(all.Items) != len(pods) {
			return fmt.Errorf("%d of %d pods ready", len(pods), len(all.Items))
		}
		for _, p := range all.Items {
			if !hasEnv(p, "ROLE", "api") {
				return fmt.Errorf("pod %s runs without ROLE=api", p.Name)
			}
		}
		return nil
	})
	testproc.Eventually(t, 120*time.Second, "the idle consumers at 0 replicas", func() error {
		if n, err := consumers(); err != nil || n != 0 {
			return fmt.Errorf("%d replicas (%v)", n, err)
		}
		return nil
	})
	// The HPA sets 0 replicas before the last consumer has stopped: a
	// purchase sent while it still runs is consumed by it, the lag never
	// rises and nothing wakes (a CI run failed so). Wait until the pod is gone.
	waitReplicas(t, "purchase-system", "app=purchase-consumer", 0)

	web, err := readyPods(ctx, "purchase-system", "app=customer-web-server")
	if err != nil || len(web) == 0 {
		t.Fatalf("no ready web server: %v", err)
	}
	base := "http://" + web[0].Status.PodIP + ":8080"
	userid := fmt.Sprintf("zero-%d", time.Now().UnixNano())
	key := "zero-key-" + userid
	buy := func() (int, map[string]any) {
		req, err := http.NewRequest(http.MethodPost, base+"/buy", strings.NewReader(`{"username":"zero","userid":"`+userid+`","price":1}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	purchases := func() (int, []map[string]any, error) {
		r, err := http.Get(base + "/getAllUserBuys/" + userid)
		if err != nil {
			return 0, nil, err
		}
		defer r.Body.Close()
		var buys []map[string]any
		err = json.NewDecoder(r.Body).Decode(&buys)
		return r.StatusCode, buys, err
	}
	// No consumer runs: the read is answered (nothing stored yet) and the
	// purchase with a key accepted.
	if code, buys, err := purchases(); code != http.StatusOK || err != nil || len(buys) != 0 {
		t.Fatalf("GET /getAllUserBuys with the consumers at 0: %d, %d purchases (%v); want 200 and none", code, len(buys), err)
	}
	code, first := buy()
	if code != http.StatusCreated {
		t.Fatalf("POST /buy with an Idempotency-Key, the consumers at 0: %d %v, want 201", code, first)
	}
	testproc.Eventually(t, 120*time.Second, "one consumer woken by the purchase", func() error {
		if n, err := consumers(); err != nil || n < 1 {
			return fmt.Errorf("%d replicas (%v)", n, err)
		}
		return nil
	})
	testproc.Eventually(t, 120*time.Second, "the purchase stored", func() error {
		code, buys, err := purchases()
		if err != nil || code != http.StatusOK || len(buys) != 1 {
			return fmt.Errorf("%d: %d purchases (%v)", code, len(buys), err)
		}
		if buys[0]["id"] != first["id"] {
			return fmt.Errorf("stored purchase %v, want the one /buy answered (%v)", buys[0]["id"], first["id"])
		}
		return nil
	})
	// The retry answers the key's purchase and stores nothing more.
	if code, again := buy(); code/100 != 2 || again["id"] != first["id"] {
		t.Errorf("the key's retry: %d %v, want 2xx with id %v", code, again, first["id"])
	}
	testproc.Eventually(t, 60*time.Second, "the lag drained", func() error {
		out, err := execKubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=consumergroup%3Dpurchase-consumer-group,topic%3Dpurchases")
		if err != nil || !strings.Contains(out, `"value":"0"`) {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	if code, buys, err := purchases(); code != http.StatusOK || len(buys) != 1 {
		t.Errorf("after the retry: %d, %d purchases (%v), want the one", code, len(buys), err)
	}
}

func hasEnv(p corev1.Pod, name, value string) bool {
	for _, c := range p.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == name && e.Value == value {
				return true
			}
		}
	}
	return false
}
