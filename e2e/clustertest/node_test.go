package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/purchase-system/purchase-system/devcluster/node"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// namespace creates a namespace for one test and deletes it afterwards.
func namespace(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("e2e-%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))[:min(20, len(t.Name()))], time.Now().UnixNano()%100000)
	name = strings.Trim(strings.ReplaceAll(name, "_", "-"), "-")
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	testproc.Eventually(t, 30*time.Second, "default service account in "+name, func() error {
		_, err := client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	return name
}

// webDeployment is the web server as a Deployment, talking to the host's
// Kafka broker.
func webDeployment(ns string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": "web"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{
					"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
				}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(20)),
					Containers: []corev1.Container{{
						Name:  "web",
						Image: "purchase-system/webserver:dev",
						Env: []corev1.EnvVar{
							{Name: "KAFKA_BOOTSTRAP_SERVERS", Value: hostKafka},
							{Name: "KAFKA_TOPIC", Value: "purchases-" + ns},
							{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
							{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
						},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
						LivenessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 5,
						},
					}},
				},
			},
		},
	}
}

func readyPods(ctx context.Context, ns, selector string) ([]corev1.Pod, error) {
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var ready []corev1.Pod
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
				ready = append(ready, p)
			}
		}
	}
	return ready, nil
}

func waitReplicas(t *testing.T, ns, selector string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	testproc.Eventually(t, 90*time.Second, fmt.Sprintf("%d ready pods", n), func() error {
		var err error
		pods, err = readyPods(context.Background(), ns, selector)
		if err != nil {
			return err
		}
		all, _ := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if len(pods) != n || len(all.Items) != n {
			return fmt.Errorf("%d ready of %d pods", len(pods), len(all.Items))
		}
		return nil
	})
	return pods
}

// pidOf is the host pid of the pod's first running container, 0 if none.
func pidOf(p corev1.Pod) int {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running == nil {
			continue
		}
		if pid, err := node.ContainerPID(string(p.UID), cs.ContainerID); err == nil {
			return pid
		}
	}
	return 0
}

func processAlive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// TestDeploymentScalesPodsOnTheNode: each replica is a container with its
// own address and network namespace; scaled down, the removed ones get
// SIGTERM and exit 0 after draining (SIGKILL would be 137), as the
// kubelet reports in their last status.
func TestDeploymentScalesPodsOnTheNode(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, webDeployment(ns, 3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitReplicas(t, ns, "app=web", 3)

	ips := map[string]bool{}
	for _, p := range pods {
		if ips[p.Status.PodIP] {
			t.Fatalf("two pods share IP %s", p.Status.PodIP)
		}
		ips[p.Status.PodIP] = true
		if pid := pidOf(p); pid == 0 || !processAlive(pid) {
			t.Fatalf("pod %s: no live process behind container id %v", p.Name, p.Status.ContainerStatuses)
		}
		// Each replica binds :8080 in its own network namespace and answers
		// on its own pod IP.
		resp, err := http.Get("http://" + p.Status.PodIP + ":8080/healthz")
		if err != nil {
			t.Fatalf("pod %s at %s: %v", p.Name, p.Status.PodIP, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("pod %s /healthz = %d", p.Name, resp.StatusCode)
		}
		logs := kubectl(t, "-n", ns, "logs", p.Name)
		if !strings.Contains(logs, `"msg":"listening"`) {
			t.Fatalf("kubectl logs %s lacks the server's start line:\n%s", p.Name, logs)
		}
	}

	// The kubelet's last status of each removed pod carries its exit code.
	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := client.AppsV1().Deployments(ns).Patch(ctx, "web", "application/merge-patch+json",
		[]byte(`{"spec":{"replicas":1}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	exits := map[string]int32{}
	deadline := time.After(60 * time.Second)
	for len(exits) < 2 {
		select {
		case ev := <-w.ResultChan():
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			for _, cs := range p.Status.ContainerStatuses {
				if term := cs.State.Terminated; term != nil && p.DeletionTimestamp != nil {
					exits[p.Name] = term.ExitCode
				}
			}
		case <-deadline:
			t.Fatalf("two removed pods' exits not seen within 60 s: %v", exits)
		}
	}
	for name, code := range exits {
		if code != 0 {
			t.Errorf("pod %s exited %d after SIGTERM, want 0 (a clean drain)", name, code)
		}
	}
	remaining := waitReplicas(t, ns, "app=web", 1)
	last := pidOf(remaining[0])
	if err := client.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 60*time.Second, "no pods and no processes left", func() error {
		all, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(all.Items) > 0 || processAlive(last) {
			return fmt.Errorf("%d pods, last process alive: %v", len(all.Items), processAlive(last))
		}
		return nil
	})
}

func TestUnknownImageSaysWhy(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nginx", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nginx", Image: "nginx:1.27"}}},
	}
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 30*time.Second, "a clear reason in the container status", func() error {
		p, err := client.CoreV1().Pods(ns).Get(ctx, "nginx", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cs := range p.Status.ContainerStatuses {
			// Pulls go to the local registry only (containerd's
			// certs.d/_default), never to the internet: the reason names
			// the image, and the registry that answered does not have it
			// (Docker Hub has nginx:1.27; without the mirror the pull would
			// fail to connect instead).
			if w := cs.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") &&
				strings.Contains(w.Message, "docker.io/library/nginx:1.27") && strings.Contains(w.Message, "not found") {
				return nil
			}
		}
		return fmt.Errorf("status %+v", p.Status.ContainerStatuses)
	})
}

// promQuery runs an instant query against the host Prometheus, at the
// given time if one is given.
func promQuery(t *testing.T, q string, at ...time.Time) []struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
} {
	t.Helper()
	u := prometheusURL + "/api/v1/query?query=" + url.QueryEscape(q)
	if len(at) > 0 {
		u += fmt.Sprintf("&time=%.3f", float64(at[0].UnixMilli())/1000)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("prometheus: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Status != "success" {
		t.Fatalf("prometheus query %q: %v %s", q, err, b)
	}
	return r.Data.Result
}

func TestPrometheusScrapesPodsWithTheirNamespaceAndName(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, webDeployment(ns, 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitReplicas(t, ns, "app=web", 2)
	want := []string{pods[0].Name, pods[1].Name}
	sort.Strings(want)
	for _, p := range pods {
		// A request each, so the counter series exist.
		resp, err := http.Get("http://" + p.Status.PodIP + ":8080/getAllUserBuys/x")
		if err == nil {
			resp.Body.Close()
		}
	}
	testproc.Eventually(t, 60*time.Second, "series for both pods", func() error {
		res := promQuery(t, fmt.Sprintf(`flask_http_request_total{namespace=%q}`, ns))
		// Each pod has several series (one per method, route and status).
		seen := map[string]bool{}
		var got []string
		for _, r := range res {
			if r.Metric["namespace"] != ns || r.Metric["app"] != "web" {
				return fmt.Errorf("series with wrong labels: %v", r.Metric)
			}
			if !seen[r.Metric["pod"]] {
				seen[r.Metric["pod"]] = true
				got = append(got, r.Metric["pod"])
			}
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("pods in Prometheus %v, want %v", got, want)
		}
		return nil
	})
}

func TestTopPodsShowsCPUOfAPodUnderLoad(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, webDeployment(ns, 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := waitReplicas(t, ns, "app=web", 1)[0]
	loadCtx, stop := context.WithCancel(ctx)
	defer stop()
	for range 8 {
		go func() {
			for loadCtx.Err() == nil {
				resp, err := http.Post("http://"+pod.Status.PodIP+":8080/buy", "application/json",
					strings.NewReader(`{"username":"u","userid":"top","price":1}`))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	testproc.Eventually(t, 120*time.Second, "kubectl top shows CPU for the loaded pod", func() error {
		out, err := execKubectl("top", "pod", "-n", ns, pod.Name, "--no-headers")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		f := strings.Fields(out)
		if len(f) < 3 {
			return fmt.Errorf("unexpected output %q", out)
		}
		milli, err := strconv.Atoi(strings.TrimSuffix(f[1], "m"))
		if err != nil || milli <= 0 {
			return fmt.Errorf("CPU %q", f[1])
		}
		t.Logf("kubectl top: %s", strings.TrimSpace(out))
		return nil
	})
}

func TestAggregatedAPIReachesItsPodThroughTheAPIServer(t *testing.T) {
	// metrics-server is an APIService backed by a pod on the node:
	// the API server proxies to its pod IP with the front-proxy client
	// certificate, and metrics-server authenticates the user it names.
	testproc.Eventually(t, 90*time.Second, "metrics.k8s.io answers through the API server", func() error {
		out, err := execKubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var list struct {
			Items []struct {
				Metadata struct{ Name string } `json:"metadata"`
			} `json:"items"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return err
		}
		for _, it := range list.Items {
			if strings.HasPrefix(it.Metadata.Name, "metrics-server-") {
				return nil
			}
		}
		return fmt.Errorf("metrics-server's own pod not in %s", out)
	})
	// A user the API server knows but RBAC does not allow is refused.
	out, err := execKubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods", "--as=nobody")
	if err == nil || !strings.Contains(out, "forbidden") {
		t.Fatalf("unprivileged user: %v %s, want forbidden", err, out)
	}
}

// A container whose process exits is restarted with the kubelet's back-off
// and its pod stays the one pod of its ReplicaSet: reporting it Failed would
// make the ReplicaSet replace it over and over.
func TestCrashingContainerIsRestartedWithBackOff(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	d := webDeployment(ns, 1)
	// An unusable setting: the web server exits 1 at start, saying why.
	d.Spec.Template.Spec.Containers[0].Env = append(d.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "PUBLISH_TIMEOUT", Value: "soon"})
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 60*time.Second, "a restart after the first exit", func() error {
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 {
			return fmt.Errorf("%d pods: the crashing pod was replaced instead of restarted", len(pods.Items))
		}
		p := pods.Items[0]
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return fmt.Errorf("pod phase %s under restartPolicy Always", p.Status.Phase)
		}
		if len(p.Status.ContainerStatuses) != 1 {
			return fmt.Errorf("no container status yet")
		}
		cs := p.Status.ContainerStatuses[0]
		last := cs.LastTerminationState.Terminated
		if cs.RestartCount < 1 || last == nil || last.ExitCode != 1 {
			return fmt.Errorf("restarts %d, last termination %+v", cs.RestartCount, last)
		}
		return nil
	})
	pods, _ := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if w := pods.Items[0].Status.ContainerStatuses[0].State.Waiting; w != nil && w.Reason != "CrashLoopBackOff" {
		t.Fatalf("waiting reason %q, want CrashLoopBackOff", w.Reason)
	}
	logs, err := execKubectl("-n", ns, "logs", pods.Items[0].Name)
	if err != nil || !strings.Contains(logs, "PUBLISH_TIMEOUT") {
		t.Fatalf("kubectl logs should say why it exits: %v %s", err, logs)
	}
}

// TestKubeletDoesNotEvictForDiskSpace: the kubelet that runs evicts no pod
// because the host's disk is nearly full. With a percentage threshold it
// evicted the whole system mid-scenario on a machine whose free share is a
// few percent of a large volume (docs/RELIABILITY.md). Read from the
// running kubelet's /configz, so a config the kubelet ignores or overrides
// fails here too.
func TestKubeletDoesNotEvictForDiskSpace(t *testing.T) {
	ctx := context.Background()
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("want the one node: %v (%d nodes)", err, len(nodes.Items))
	}
	raw, err := client.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", nodes.Items[0].Name, "proxy", "configz").DoRaw(ctx)
	if err != nil {
		t.Fatalf("the kubelet's configz: %v", err)
	}
	var cfg struct {
		Kubelet struct {
			EvictionHard map[string]string `json:"evictionHard"`
		} `json:"kubeletconfig"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("the kubelet's configz: %v\n%s", err, raw)
	}
	for _, signal := range []string{"nodefs.available", "nodefs.inodesFree", "imagefs.available", "imagefs.inodesFree"} {
		if v, ok := cfg.Kubelet.EvictionHard[signal]; !ok || v != "0%" {
			t.Errorf("evictionHard %s = %q (set: %v), want \"0%%\": the kubelet evicts pods when the host disk crosses it", signal, v, ok)
		}
	}
	t.Logf("evictionHard: %v", cfg.Kubelet.EvictionHard)
}
