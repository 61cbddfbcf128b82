package clustertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// docs/moving-over.md's KEDA steps on the local cluster: the seed guide's
// ScaledObject, converted by adapter migrate-keda and applied as it comes
// out, gives an HPA that reads its lag from this adapter. Its target is a
// Deployment of its own (pods that never schedule: the HPA still reads),
// since the consumer already has the base's HPA.
func TestKEDAScaledObjectMovesOver(t *testing.T) {
	deploySystem(t)
	const ns, target = "purchase-system", "keda-moved"
	ctx := context.Background()
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: target, Namespace: ns}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To(int32(1)),
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": target}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": target}}, Spec: pendingPodSpec()},
	}}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.AppsV1().Deployments(ns).Delete(context.Background(), target, metav1.DeleteOptions{})
	})

	so := filepath.Join(t.TempDir(), "scaledobject.yaml")
	if err := os.WriteFile(so, []byte(`apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: `+target+`
  namespace: `+ns+`
spec:
  scaleTargetRef:
    name: `+target+`
  minReplicaCount: 1
  maxReplicaCount: 5
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: kafka:9092
        consumerGroup: purchase-consumer-group
        topic: purchases
        lagThreshold: "100"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	hpa, err := exec.Command(filepath.Join(repoRoot, "bin", "adapter"), "migrate-keda", so).Output()
	if err != nil {
		t.Fatalf("adapter migrate-keda: %v", err)
	}
	file := filepath.Join(t.TempDir(), "hpa.yaml")
	if err := os.WriteFile(file, hpa, 0o644); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "apply", "-f", file)
	name := "keda-hpa-" + target
	t.Cleanup(func() { _, _ = execKubectl("-n", ns, "delete", "hpa", name, "--ignore-not-found") })
	testproc.Eventually(t, 90*time.Second, "the converted HPA reads kafka_consumergroup_lag", func() error {
		h, err := client.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range h.Status.Conditions {
			if c.Type == "ScalingActive" && c.Status != corev1.ConditionTrue {
				return fmt.Errorf("ScalingActive %s: %s: %s", c.Status, c.Reason, c.Message)
			}
		}
		for _, m := range h.Status.CurrentMetrics {
			if m.External != nil && m.External.Metric.Name == "kafka_consumergroup_lag" && m.External.Current.AverageValue != nil {
				return nil
			}
		}
		return fmt.Errorf("no kafka_consumergroup_lag in the HPA's status yet: %+v", h.Status)
	})
	if !strings.Contains(string(hpa), "offsetResetPolicy: latest") {
		t.Errorf("converted HPA lacks KEDA's default offsetResetPolicy:\n%s", hpa)
	}
}
