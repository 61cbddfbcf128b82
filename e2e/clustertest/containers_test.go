package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/purchase-system/purchase-system/devcluster/node"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// procStatus reads fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// rootMountReadOnly reports whether the process's / is mounted read-only.
func rootMountReadOnly(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == "/" {
			return strings.Split(f[5], ",")[0] == "ro"
		}
	}
	t.Fatalf("no / in the mountinfo of %d", pid)
	return false
}

func runPod(t *testing.T, ns string, pod *corev1.Pod) corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	testproc.Eventually(t, 90*time.Second, "pod "+pod.Name+" running", func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		got = *p
		if pidOf(*p) == 0 {
			return fmt.Errorf("no process yet: %+v", p.Status.ContainerStatuses)
		}
		return nil
	})
	return got
}

// The project's image runs as a container: its process sees the image's
// root (not the host's), runs as the image's non-root user, and with the
// hardened security context its root is read-only, no_new_privs is set
// and it holds no capability.
func TestPodsRunTheirImageAsContainers(t *testing.T) {
	ns := namespace(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: "purchase-system/webserver:dev", ImagePullPolicy: corev1.PullAlways, // the :dev this run pushed, not one an earlier run left on the node
			Env: []corev1.EnvVar{{Name: "KAFKA_BOOTSTRAP_SERVERS", Value: hostKafka}},
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot: ptr.To(true), ReadOnlyRootFilesystem: ptr.To(true), AllowPrivilegeEscalation: ptr.To(false),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			},
		}}},
	}
	p := runPod(t, ns, pod)
	pid := pidOf(p)
	root := fmt.Sprintf("/proc/%d/root", pid)
	img, err := os.ReadFile(filepath.Join(root, "usr", "local", "bin", "webserver"))
	if err != nil {
		t.Fatalf("the image's program under %s: %v", root, err)
	}
	if !bytes.HasPrefix(img, []byte("\x7fELF")) {
		t.Fatal("not the program")
	}
	if _, err := os.Stat(filepath.Join(root, "etc", "os-release")); err == nil {
		t.Errorf("%s/etc/os-release exists: the process sees the host's root, not the image's", root)
	}
	if _, err := os.Stat(filepath.Join(root, "bin", "sh")); err == nil {
		t.Errorf("the image has a shell")
	}
	st := procStatus(t, pid)
	if !strings.HasPrefix(st["Uid"], "65532\t") || !strings.HasPrefix(st["Gid"], "65532\t") {
		t.Errorf("Uid %q Gid %q, want the image's 65532", st["Uid"], st["Gid"])
	}
	if st["NoNewPrivs"] != "1" || st["CapEff"] != "0000000000000000" || st["CapBnd"] != "0000000000000000" {
		t.Errorf("NoNewPrivs %s CapEff %s CapBnd %s, want 1, none, none", st["NoNewPrivs"], st["CapEff"], st["CapBnd"])
	}
	if !rootMountReadOnly(t, pid) {
		t.Error("readOnlyRootFilesystem: the root is writable")
	}
	// The kubelet reports one of the image's tags (the archive has :dev
	// and :<version>) and, as its ID, the digest the local registry holds
	// for :dev (under whichever name the node's store lists first: a push
	// to another repository of the same bytes adds a name).
	digest, _ := manifestDigest(t, "purchase-system/webserver", "dev")
	if cs := p.Status.ContainerStatuses[0]; !strings.HasPrefix(cs.Image, "docker.io/purchase-system/webserver:") || !strings.HasSuffix(cs.ImageID, "@"+digest) {
		t.Errorf("image %q imageID %q, want docker.io/purchase-system/webserver, pulled from the local registry by its digest %s", cs.Image, cs.ImageID, digest)
	}
	// The pod's view: PID 1, its own hostname.
	if b, err := os.ReadFile(filepath.Join(root, "proc", "1", "comm")); err != nil || strings.TrimSpace(string(b)) != "webserver" {
		t.Errorf("PID 1 inside the pod is %q (%v), want webserver", b, err)
	}

	// runAsUser is honoured.
	pod2 := pod.DeepCopy()
	pod2.Name = "web-1234"
	pod2.Spec.Containers[0].SecurityContext.RunAsUser = ptr.To(int64(1234))
	pod2.Spec.Containers[0].SecurityContext.RunAsGroup = ptr.To(int64(4321))
	p2 := runPod(t, ns, pod2)
	st2 := procStatus(t, pidOf(p2))
	if !strings.HasPrefix(st2["Uid"], "1234\t") || !strings.HasPrefix(st2["Gid"], "4321\t") {
		t.Errorf("runAsUser 1234/runAsGroup 4321: Uid %q Gid %q", st2["Uid"], st2["Gid"])
	}
}

// An image that runs as root is refused under runAsNonRoot, with the
// kubelet's message; the image comes from an archive pushed to the local
// registry, where the node pulls it from.
func TestRunAsNonRootRefusesARootImage(t *testing.T) {
	ns := namespace(t)
	archive := filepath.Join(t.TempDir(), "root.tar")
	build := exec.Command(filepath.Join(repoRoot, "bin", "imagebuild"), "--root", filepath.Join(repoRoot, "_output", "images", "rootfs", "webserver"),
		"--user", "0:0", "--entrypoint", "/usr/local/bin/webserver", "--tag", "purchase-system/webserver:root-test", "--out", archive)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("imagebuild: %v\n%s", err, out)
	}
	push := exec.Command(filepath.Join(repoRoot, "bin", "imagepush"), "--mirror", node.LocalRegistry, "--tls-dir", registryTLSDir(), archive)
	if out, err := push.CombinedOutput(); err != nil {
		t.Fatalf("imagepush: %v\n%s", err, out)
	}
	ctx := context.Background()
	for name, sc := range map[string]*corev1.SecurityContext{
		"root-image": {RunAsNonRoot: ptr.To(true)},
		"root-user":  {RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(0))},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: "purchase-system/webserver:root-test", SecurityContext: sc}}}}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		want := "container has runAsNonRoot and image will run as root"
		if name == "root-user" {
			want = "container's runAsUser breaks non-root policy"
		}
		testproc.Eventually(t, 30*time.Second, name+" refused", func() error {
			p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, cs := range p.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil && w.Reason == "CreateContainerConfigError" && strings.Contains(w.Message, want) {
					return nil
				}
			}
			return fmt.Errorf("status %+v", p.Status.ContainerStatuses)
		})
	}
}

// kubectl create deployment with no readiness probe: the kubelet counts a
// started container Ready, so the Deployment becomes available.
func TestAContainerWithoutReadinessProbeBecomesReady(t *testing.T) {
	ns := namespace(t)
	kubectl(t, "-n", ns, "create", "deployment", "x", "--image=purchase-system/webserver:dev")
	kubectl(t, "-n", ns, "rollout", "status", "deployment/x", "--timeout=60s")
	out := kubectl(t, "-n", ns, "get", "deployment", "x", "-o", "jsonpath={.status.readyReplicas}")
	if strings.TrimSpace(out) != "1" {
		t.Fatalf("ready replicas %q, want 1", out)
	}
}
