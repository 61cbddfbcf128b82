package clustertest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// A PersistentVolumeClaim of the default class (kind's name, standard) is
// bound by the provisioner to a directory in the cluster's state, and what
// one pod writes there a later pod reads after the first is deleted.
func TestClaimsBindAndDataOutlivesThePod(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data"}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Mi")}},
	}}
	if _, err := client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("written-%d", time.Now().UnixNano())
	run := func(name, script string) string {
		t.Helper()
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "c", Image: "busybox:1.35.0", Command: []string{"/bin/sh", "-c", script},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}},
		}}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		testproc.Eventually(t, 120*time.Second, name+" done", func() error {
			p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if p.Status.Phase != corev1.PodSucceeded {
				return fmt.Errorf("phase %s %+v", p.Status.Phase, p.Status.ContainerStatuses)
			}
			return nil
		})
		return strings.TrimSpace(kubectl(t, "-n", ns, "logs", name))
	}
	run("writer", "echo "+token+" > /data/f")
	got, err := client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
	if err != nil || got.Status.Phase != corev1.ClaimBound || got.Spec.StorageClassName == nil || *got.Spec.StorageClassName != "standard" {
		t.Fatalf("claim %+v (%v): want Bound, class standard", got.Status, err)
	}
	pv, err := client.CoreV1().PersistentVolumes().Get(ctx, got.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if hp := pv.Spec.HostPath; hp == nil || !strings.HasPrefix(hp.Path, filepath.Join(repoRoot, ".cache", "devcluster", "volumes")+"/") {
		t.Errorf("volume %+v: want a directory in the cluster's state", pv.Spec.PersistentVolumeSource)
	}
	if err := client.CoreV1().Pods(ns).Delete(ctx, "writer", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if out := run("reader", "cat /data/f"); out != token {
		t.Fatalf("the next pod read %q, want %q", out, token)
	}
}
