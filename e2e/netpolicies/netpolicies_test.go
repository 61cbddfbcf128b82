// Package netpolicies tries the system's NetworkPolicies as a user applies
// them (Kafka, PostgreSQL and Prometheus in the cluster: overlays/e2e on
// the local Kubernetes, overlays/kind-e2e on kind), each flow from a pod
// of its own network namespace that carries the source's namespace and
// labels. Each denied flow has an allowed twin to the same address and
// port, so a refusal is the policy's, not a closed port's.
//
//	go test ./e2e/netpolicies -args -kubeconfig KUBECONFIG   (scripts/e2e.sh and e2e/kind/run.sh run it)
package netpolicies

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

var (
	kubeconfig = flag.String("kubeconfig", "", "kubeconfig of the cluster the system is deployed on")
	withKEDA   = flag.Bool("keda", false, "KEDA runs behind the adapter with its demo (scripts/keda.sh deploy): try its flows too")
	pullAlways = flag.Bool("pull-always", false, "pull the probe image at every start: on the local Kubernetes its registry holds the :dev this run pushed, where a node kept from an earlier run may hold an older one (kind has it loaded and nothing to pull from)")
)

const (
	system     = "purchase-system"
	monitoring = "monitoring"
	probeImage = "purchase-system/nodeprobe:dev"
	// tries is how many seconds a probe dials; the verdict is its last
	// three tries (the enforcer programs a new pod a moment after it
	// starts, and until then nothing is denied).
	tries = 12
)

// flow is one connection a NetworkPolicy decides.
type flow struct {
	name      string
	namespace string            // the source pod's namespace
	labels    map[string]string // the source pod's labels
	dest      string            // host:port
	allowed   bool
}

func labels(app string) map[string]string { return map[string]string{"app": app} }

func TestTheSystemsNetworkPoliciesAreEnforced(t *testing.T) {
	if *kubeconfig == "" {
		t.Skip("runs on a deployed system: scripts/e2e.sh and e2e/kind/run.sh pass -kubeconfig")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 50, 100 // fifteen probes polled at once
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	other := fmt.Sprintf("netpol-%d", time.Now().UnixNano()%100000)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Namespaces().Delete(context.Background(), other, metav1.DeleteOptions{}) })

	kafka := "kafka." + system + ".svc.cluster.local:9092"
	postgres := "postgres." + system + ".svc.cluster.local:5432"
	prometheus := "prometheus." + monitoring + ".svc.cluster.local:9090"
	apiMetrics := podAddress(t, client, system, "app=customer-management-api", 9101)
	adapterMetrics := podAddress(t, client, monitoring, "app=purchase-metrics-adapter", 9102)
	web, api, adapter, prom := labels("customer-web-server"), labels("customer-management-api"), labels("purchase-metrics-adapter"), labels("prometheus")
	flows := []flow{
		{"management API → PostgreSQL", system, api, postgres, true},
		{"web server → PostgreSQL", system, web, postgres, false},
		{"another namespace → PostgreSQL", other, nil, postgres, false},
		{"web server → Kafka", system, web, kafka, true},
		{"management API → Kafka", system, api, kafka, true},
		{"adapter → Kafka", monitoring, adapter, kafka, true},
		{"another pod of the system's namespace → Kafka", system, labels("not-a-service"), kafka, false},
		{"another namespace → Kafka", other, nil, kafka, false},
		{"adapter → Prometheus API", monitoring, adapter, prometheus, true},
		{"another monitoring pod → Prometheus API", monitoring, labels("not-the-adapter"), prometheus, false},
		{"another namespace → Prometheus API", other, nil, prometheus, false},
		{"Prometheus → management API metrics", monitoring, prom, apiMetrics, true},
		{"another namespace → management API metrics", other, prom, apiMetrics, false},
		{"Prometheus → adapter self-metrics", monitoring, prom, adapterMetrics, true},
		{"another namespace → adapter self-metrics", other, nil, adapterMetrics, false},
	}
	if *withKEDA {
		// manifests/keda/install and manifests/keda/demo: KEDA's operator
		// reads offsets from Kafka, the adapter forwards to KEDA's metrics
		// server, which asks the operator over gRPC; the demo's copy of
		// the consumer reads Kafka. KEDA's pods by address: their
		// Services would also pick a probe pod that carries their labels.
		kedaMetrics := podAddress(t, client, "keda", "app=keda-metrics-apiserver", 6443)
		kedaGRPC := podAddress(t, client, "keda", "app=keda-operator", 9666)
		flows = append(flows,
			flow{"KEDA's operator → Kafka", "keda", labels("keda-operator"), kafka, true},
			flow{"another pod of KEDA's namespace → Kafka", "keda", labels("not-the-operator"), kafka, false},
			flow{"KEDA's demo consumer → Kafka", "keda-demo", api, kafka, true},
			flow{"another pod of the demo's namespace → Kafka", "keda-demo", labels("not-the-consumer"), kafka, false},
			flow{"adapter → KEDA's metrics server", monitoring, adapter, kedaMetrics, true},
			flow{"another monitoring pod → KEDA's metrics server", monitoring, labels("not-the-adapter"), kedaMetrics, false},
			flow{"KEDA's metrics server → its operator (gRPC)", "keda", labels("keda-metrics-apiserver"), kedaGRPC, true},
			flow{"another namespace → KEDA's operator (gRPC)", other, nil, kedaGRPC, false},
		)
	}
	var wg sync.WaitGroup
	results := make([]string, len(flows))
	// A few probes at a time: fifteen containers started at once on a
	// 2-core kind node (cgroup v1) made runc time out freezing one
	// ("unable to freeze").
	slots := make(chan struct{}, 5)
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			connected, out, err := tryStarted(ctx, t, client, f, fmt.Sprintf("np-%d-%d", i, time.Now().UnixNano()%100000))
			switch {
			case err != nil:
				results[i] = fmt.Sprintf("%s: %v", f.name, err)
			case connected != f.allowed:
				results[i] = fmt.Sprintf("%s (%s): connected=%v, want %v:\n%s", f.name, f.dest, connected, f.allowed, out)
			default:
				t.Logf("%s (%s): connected=%v, as the policies say", f.name, f.dest, connected)
			}
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r != "" {
			t.Error(r)
		}
	}
}

func pullPolicy() corev1.PullPolicy {
	if *pullAlways {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}

// podAddress is pod IP:port of the first ready pod matching selector
// (metrics ports are not behind Services).
func podAddress(t *testing.T, client kubernetes.Interface, ns, selector string, port int) string {
	t.Helper()
	pods, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.Status.PodIP != "" {
				return fmt.Sprintf("%s:%d", p.Status.PodIP, port)
			}
		}
	}
	t.Fatalf("no ready pod %s in %s", selector, ns)
	return ""
}

// errNotStarted is a probe whose container never started (the runtime
// failed to create it): no verdict on the policy either way.
var errNotStarted = errors.New("the probe's container never started")

// tryStarted is try, again (up to three times) when the container never
// started: a runtime failure says nothing about the policy, and every
// verdict still comes from a probe that ran.
func tryStarted(ctx context.Context, t *testing.T, client kubernetes.Interface, f flow, name string) (bool, string, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var connected bool
		var out string
		connected, out, err = try(ctx, client, f, fmt.Sprintf("%s-%d", name, attempt))
		if !errors.Is(err, errNotStarted) {
			return connected, out, err
		}
		t.Logf("%s: attempt %d: %v; trying again", f.name, attempt, err)
	}
	return false, "", err
}

// try runs nodeprobe watch in a pod with the flow's namespace and labels
// and reports whether its last three tries connected (all three) or not
// (none). The pod is owned by a ConfigMap of its own, so the system's
// ReplicaSets, whose selectors its labels match, do not adopt it.
func try(ctx context.Context, client kubernetes.Interface, f flow, name string) (bool, string, error) {
	owner, err := client.CoreV1().ConfigMaps(f.namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return false, "", err
	}
	defer func() {
		// Deleting the owner deletes the pod.
		_ = client.CoreV1().ConfigMaps(f.namespace).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	}()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.namespace, Labels: f.labels, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "ConfigMap", Name: name, UID: owner.UID, Controller: ptr.To(true),
		}}},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			AutomountServiceAccountToken:  ptr.To(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "probe", Image: probeImage, ImagePullPolicy: pullPolicy(),
				Args: []string{"watch", fmt.Sprint(tries), f.dest},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	if _, err := client.CoreV1().Pods(f.namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return false, "", err
	}
	deadline := time.Now().Add(3 * time.Minute)
	var final *corev1.Pod
	for {
		p, err := client.CoreV1().Pods(f.namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			final = p
			break
		}
		if time.Now().After(deadline) {
			return false, "", fmt.Errorf("probe pod %s/%s did not finish within 3 min (phase %s)", f.namespace, name, p.Status.Phase)
		}
		time.Sleep(time.Second)
	}
	for _, cs := range final.Status.ContainerStatuses {
		if term := cs.State.Terminated; term != nil && term.Reason == "StartError" {
			return false, "", fmt.Errorf("%w: %s", errNotStarted, term.Message)
		}
	}
	raw, err := client.CoreV1().Pods(f.namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return false, "", err
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 3 {
		return false, string(raw), fmt.Errorf("probe printed %d tries, want at least 3 (pod %s, %s; containers %+v):\n%s",
			len(lines), final.Status.Phase, final.Status.Message, final.Status.ContainerStatuses, raw)
	}
	last := lines[len(lines)-3:]
	connected := 0
	for _, l := range last {
		if strings.HasSuffix(l, ": connected") {
			connected++
		}
	}
	out := strings.Join(last, "\n")
	switch connected {
	case 3:
		return true, out, nil
	case 0:
		return false, out, nil
	}
	return false, out, fmt.Errorf("the last three tries disagree (the policy did not settle within %d s):\n%s", tries, out)
}
