package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// components/scale-to-zero end to end: idle, the consumer goes to 0
// replicas; a purchase wakes it (lag 1 → 1 replica), it stores the
// purchase and the lag drains to 0. The overlay's HPA is restored after.
func TestConsumerScalesToZeroAndWakesOnAPurchase(t *testing.T) {
	deploySystem(t)
	dir := t.TempDir()
	// The local overlay with the component, and short windows so the test
	// does not wait the seed's five minutes.
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
  - target: {kind: HorizontalPodAutoscaler, name: customer-management-api}
    patch: |-
      - {op: replace, path: /spec/behavior/scaleDown/stabilizationWindowSeconds, value: 0}
      - {op: replace, path: /spec/behavior/scaleUp/stabilizationWindowSeconds, value: 0}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "-k", dir)
	t.Cleanup(func() {
		kubectl(t, "apply", "-k", filepath.Join(repoRoot, systemOverlay))
		waitReplicas(t, "purchase-system", "app=customer-management-api", 1)
	})
	ctx := context.Background()
	replicas := func() (int32, error) {
		d, err := client.AppsV1().Deployments("purchase-system").Get(ctx, "customer-management-api", metav1.GetOptions{})
		if err != nil {
			return -1, err
		}
		return *d.Spec.Replicas, nil
	}
	testproc.Eventually(t, 120*time.Second, "the idle consumer at 0 replicas", func() error {
		if n, err := replicas(); err != nil || n != 0 {
			return fmt.Errorf("%d replicas (%v)", n, err)
		}
		return nil
	})
	// The HPA sets 0 replicas before the last consumer has stopped: a
	// purchase sent while it still runs is consumed by it, the lag never
	// rises and nothing wakes (a CI run failed so). Wait until the pod is gone.
	waitReplicas(t, "purchase-system", "app=customer-management-api", 0)

	web, err := readyPods(ctx, "purchase-system", "app=customer-web-server")
	if err != nil || len(web) == 0 {
		t.Fatalf("no ready web server: %v", err)
	}
	userid := fmt.Sprintf("zero-%d", time.Now().UnixNano())
	resp, err := http.Post("http://"+web[0].Status.PodIP+":8080/buy", "application/json",
		strings.NewReader(`{"username":"zero","userid":"`+userid+`","price":1}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /buy: %s", resp.Status)
	}
	testproc.Eventually(t, 120*time.Second, "one consumer woken by the purchase", func() error {
		if n, err := replicas(); err != nil || n < 1 {
			return fmt.Errorf("%d replicas (%v)", n, err)
		}
		return nil
	})
	testproc.Eventually(t, 120*time.Second, "the purchase stored", func() error {
		r, err := http.Get("http://" + web[0].Status.PodIP + ":8080/getAllUserBuys/" + userid)
		if err != nil {
			return err
		}
		defer r.Body.Close()
		var buys []map[string]any
		if err := json.NewDecoder(r.Body).Decode(&buys); err != nil || len(buys) != 1 {
			return fmt.Errorf("%s: %d purchases (%v)", r.Status, len(buys), err)
		}
		return nil
	})
	testproc.Eventually(t, 60*time.Second, "the lag drained", func() error {
		out, err := execKubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=consumergroup%3Dpurchase-consumer-group,topic%3Dpurchases")
		if err != nil || !strings.Contains(out, `"value":"0"`) {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
}
