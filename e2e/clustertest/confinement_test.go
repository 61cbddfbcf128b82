package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/purchase-system/purchase-system/devcluster/node"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// probeImage is devcluster/cmd/nodeprobe's image (scripts/images.sh): /var/run is
// a symlink to /run in it, as in Debian's and Alpine's images.
const probeImage = "purchase-system/nodeprobe:dev"

// privilegedNamespace is a test namespace whose Pod Security level lets a
// container run as uid 0: the node itself must confine it.
func privilegedNamespace(t *testing.T) string {
	t.Helper()
	ns := namespace(t)
	patch := []byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"baseline"}}}`)
	if _, err := client.CoreV1().Namespaces().Patch(context.Background(), ns, "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// startPod creates pod and waits until its first container is running.
func startPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	testproc.Eventually(t, 90*time.Second, "pod "+pod.Name+" running", func() error {
		var err error
		got, err = client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cs := range got.Status.ContainerStatuses {
			if cs.State.Running != nil {
				return nil
			}
			if w := cs.State.Waiting; w != nil {
				return fmt.Errorf("waiting: %s %s", w.Reason, w.Message)
			}
		}
		return fmt.Errorf("phase %s", got.Status.Phase)
	})
	return got
}

// containerPid is the host pid of a running container's first process.
func containerPid(t *testing.T, p *corev1.Pod) int {
	t.Helper()
	var pid int
	testproc.Eventually(t, 10*time.Second, "the container's process", func() error {
		var err error
		pid, err = node.ContainerPID(string(p.UID), p.Status.ContainerStatuses[0].ContainerID)
		return err
	})
	return pid
}

// reportField is one string of the probe's report; a key it lacks fails
// the test (a missing key must not read as "the attempt succeeded").
func reportField(t *testing.T, r map[string]any, key string) string {
	t.Helper()
	v, ok := r[key].(string)
	if !ok {
		t.Fatalf("the probe's report has no %q (a string): %v", key, r)
	}
	return v
}

func probeReport(t *testing.T, ns, pod string) map[string]any {
	t.Helper()
	var report map[string]any
	testproc.Eventually(t, 30*time.Second, "the probe's report", func() error {
		out, err := execKubectl("-n", ns, "logs", pod)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "{") {
				return json.Unmarshal([]byte(line), &report)
			}
		}
		return fmt.Errorf("no report yet: %q", out)
	})
	return report
}

// TestARootContainerIsConfined runs a container as uid 0 (what a pod may
// do outside a restricted namespace) and checks, from inside and from the
// host, that the runtime confines it: the host's kernel settings are not
// writable, no device nodes, its own IPC and PID namespaces, seccomp
// filtering, the memory limit in its cgroup, run by containerd's runc
// shim; a volume below the image's /var/run symlink stays in the container
// (the service account token is readable there); secret files carry the
// modes the manifest asks for.
func TestARootContainerIsConfined(t *testing.T) {
	ns := privilegedNamespace(t)
	ctx := context.Background()
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		StringData: map[string]string{"a": "1", "b": "2"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "root-probe", Namespace: ns},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			SecurityContext:               &corev1.PodSecurityContext{FSGroup: ptr.To(int64(2000))},
			Containers: []corev1.Container{{
				Name: "probe", Image: probeImage,
				Args: []string{"confinement", "/etc/probe/a", "/etc/probe/b", "/etc/probe-default/a"},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: ptr.To(int64(0)), RunAsNonRoot: ptr.To(false),
				},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("48Mi")}},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "items", MountPath: "/etc/probe"},
					{Name: "default", MountPath: "/etc/probe-default"},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "items", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: "probe", DefaultMode: ptr.To(int32(0o400)),
					Items: []corev1.KeyToPath{{Key: "a", Path: "a", Mode: ptr.To(int32(0o440))}, {Key: "b", Path: "b"}},
				}}},
				{Name: "default", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "probe"}}},
			},
		},
	}
	p := startPod(t, pod)
	r := probeReport(t, ns, pod.Name)
	t.Logf("report: %v", r)

	if uid, _ := r["uid"].(float64); uid != 0 {
		t.Fatalf("the probe ran as uid %v, not 0: the test proves nothing", r["uid"])
	}
	// Each attempt's outcome: "" when it succeeded, else its error. A key
	// the report lacks is a failure, never a pass.
	if reportField(t, r, "corePatternOpenForWrite") == "" {
		t.Error("a uid-0 container opened /proc/sys/kernel/core_pattern for writing: the host's kernel settings are exposed")
	}
	if reportField(t, r, "sysrqTriggerOpenForWrite") == "" {
		t.Error("a uid-0 container opened /proc/sysrq-trigger for writing")
	}
	// The default capability set of Kubernetes' runtimes keeps CAP_MKNOD;
	// what must hold is that the node cannot be used (devices cgroup).
	if reportField(t, r, "deviceOpen") == "" {
		t.Errorf("a uid-0 container created a node of the host's disk and opened it (mknod: %q)", r["mknod"])
	}
	if tok := reportField(t, r, "token"); tok != "" {
		t.Errorf("the service account token below the image's /var/run symlink is not readable: %v", tok)
	}
	files, _ := r["files"].(map[string]any)
	// items[].mode wins over defaultMode; fsGroup makes the files the
	// group's and adds group read to read-only volumes (0440 stays, 0400
	// becomes 0440, 0644 stays).
	for path, want := range map[string]string{"/etc/probe/a": "0440 gid=2000", "/etc/probe/b": "0440 gid=2000", "/etc/probe-default/a": "0644 gid=2000"} {
		if files[path] != want {
			t.Errorf("%s has mode %v, want %s", path, files[path], want)
		}
	}

	pid := containerPid(t, p)
	if st := procStatus(t, pid); st["Seccomp"] != "2" {
		t.Errorf("the container's process has no seccomp filter: Seccomp %q, NoNewPrivs %q, CapEff %q", st["Seccomp"], st["NoNewPrivs"], st["CapEff"])
	}
	for _, nsName := range []string{"ipc", "pid", "mnt", "uts", "net"} {
		host, _ := os.Readlink("/proc/self/ns/" + nsName)
		ctr, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, nsName))
		if err != nil {
			t.Fatal(err)
		}
		if ctr == host {
			t.Errorf("the container shares the host's %s namespace (%s)", nsName, ctr)
		}
	}
	if shim := ancestorNamed(pid, "containerd-shim-runc-v2"); !shim {
		t.Errorf("process %d does not run under containerd-shim-runc-v2", pid)
	}
	limit := memoryLimit(t, pid)
	if limit != 48<<20 {
		t.Errorf("the container's memory cgroup limit is %d, want %d (48Mi)", limit, 48<<20)
	}
	// The host's /run holds no trace of the pod's token: the mount stayed
	// inside the container's root.
	if _, err := os.Stat("/run/secrets/kubernetes.io"); err == nil {
		t.Error("/run/secrets/kubernetes.io exists on the host: a volume followed the image's symlink out of the container")
	}
}

// TestAContainerOverItsMemoryLimitIsOOMKilledAndRestarted: the limit is
// enforced by the kernel, not just recorded.
func TestAContainerOverItsMemoryLimitIsOOMKilledAndRestarted(t *testing.T) {
	ns := namespace(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hog", Namespace: ns},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			SecurityContext:               restrictedPod(),
			Containers: []corev1.Container{{
				Name: "hog", Image: probeImage,
				Args:            []string{"alloc", "96"},
				SecurityContext: restrictedContainer(),
				Resources:       corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}},
			}},
		},
	}
	if _, err := client.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 90*time.Second, "the container OOM-killed and restarted", func() error {
		p, err := client.CoreV1().Pods(ns).Get(context.Background(), "hog", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) == 0 {
			return fmt.Errorf("no container status yet")
		}
		cs := p.Status.ContainerStatuses[0]
		last := cs.LastTerminationState.Terminated
		if cs.RestartCount >= 1 && last != nil && last.Reason == "OOMKilled" && last.ExitCode == 137 {
			return nil
		}
		return fmt.Errorf("restarts %d, last termination %+v, state %+v", cs.RestartCount, last, cs.State)
	})
}

func restrictedPod() *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func restrictedContainer() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
}

// ancestorNamed reports whether a process above pid runs the named program.
func ancestorNamed(pid int, name string) bool {
	for range 10 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		ppid, _ := strconv.Atoi(f[1])
		if ppid <= 1 {
			return false
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid)); filepath.Base(exe) == name {
			return true
		}
		pid = ppid
	}
	return false
}

// memoryLimit reads the memory cgroup limit of pid's own cgroup (v1).
func memoryLimit(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(parts[1], "memory") {
			v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes"))
			if err != nil {
				t.Fatal(err)
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
			return n
		}
	}
	t.Fatalf("no memory cgroup for pid %d:\n%s", pid, b)
	return 0
}
