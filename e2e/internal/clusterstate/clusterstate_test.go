package clusterstate

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// The state of the CI failure it was written for: a node under disk
// pressure, evicted pods, more warning events than it lists.
func TestDescribeSaysWhatWentWrong(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC)
	objs := []runtime.Object{
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n"},
			Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "node.kubernetes.io/disk-pressure", Effect: corev1.TaintEffectNoSchedule}}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionTrue},
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue},
			}},
		},
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "prometheus-1", Namespace: "monitoring"},
			Status:     corev1.PodStatus{Phase: corev1.PodFailed, Reason: "Evicted", Message: "The node was low on resource: ephemeral-storage."},
		},
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "purchase-system"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionTrue},
			}},
		},
	}
	for i := range Events + 5 {
		objs = append(objs, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i), Namespace: "monitoring"},
			Type:           corev1.EventTypeWarning,
			Reason:         "Evicted",
			Message:        fmt.Sprintf("event number %d.", i),
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Name: "prometheus-1"},
			// Listed out of order: Describe sorts by when each was last seen.
			LastTimestamp: metav1.NewTime(t0.Add(time.Duration((i*7)%(Events+5)) * time.Second)),
		})
	}
	out := Describe(context.Background(), fake.NewClientset(objs...))
	t.Log(out)
	for _, want := range []string{
		"node n: DiskPressure=True Ready=True; taints [node.kubernetes.io/disk-pressure:NoSchedule]",
		"pod monitoring/prometheus-1: Failed Evicted The node was low on resource",
		"2 pods, 1 not running and ready",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(out, "web-1") {
		t.Error("a running, ready pod is listed")
	}
	// The latest Events events, oldest first: seconds 5..19 are listed, 0..4 not.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	evs := lines[len(lines)-Events:]
	for i, l := range evs {
		if want := t0.Add(time.Duration(i+5) * time.Second).Format(time.TimeOnly); !strings.HasPrefix(strings.TrimSpace(l), want) {
			t.Errorf("event line %d = %q, want it seen at %s", i, l, want)
		}
	}
	if strings.Contains(out, t0.Add(4*time.Second).Format(time.TimeOnly)) {
		t.Error("an older event than the latest ones is listed")
	}
}
