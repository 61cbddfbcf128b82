package clustertest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// flow is one connection a NetworkPolicy decides: from a pod with the
// source's namespace and labels to a destination address.
type flow struct {
	name      string
	namespace string            // the source pod's namespace
	labels    map[string]string // the source pod's labels
	dest      string            // host:port
	allowed   bool
}

// TestNetworkPoliciesAreEnforced tries every flow the system's policies
// decide from a pod that carries the source's namespace and labels (from
// the host it would prove nothing: the enforcer lets the node's own
// address in, which is also how the kubelet's probes reach every pod —
// the deployments being Ready shows they still do). Each denied flow has
// an allowed twin to the same address and port, so a refusal is the
// policy's, not a closed port's.
func TestNetworkPoliciesAreEnforced(t *testing.T) {
	deploySystem(t)
	other := namespace(t)
	api := "customer-management-api.purchase-system.svc.cluster.local:8081"
	apiMetrics := podAddress(t, "purchase-system", "app=customer-management-api", 9101)
	web := "customer-web-server.purchase-system.svc.cluster.local:8080"
	adapterHTTPS := podAddress(t, "monitoring", "app=purchase-metrics-adapter", 6443)
	adapterMetrics := podAddress(t, "monitoring", "app=purchase-metrics-adapter", 9102)
	webLabels := map[string]string{"app": "customer-web-server"}
	flows := []flow{
		{"web server → management API", "purchase-system", webLabels, api, true},
		{"another namespace → management API", other, nil, api, false},
		{"another namespace → web server", other, nil, web, true},
		{"web server → Kafka", "purchase-system", webLabels, hostKafka, true},
		{"web server → PostgreSQL (egress not granted)", "purchase-system", webLabels, "10.88.0.1:5432", false},
		{"prometheus → management API metrics", "monitoring", map[string]string{"app": "prometheus"}, apiMetrics, true},
		{"another monitoring pod → management API metrics", "monitoring", map[string]string{"app": "not-prometheus"}, apiMetrics, false},
		{"another namespace → management API metrics", other, map[string]string{"app": "prometheus"}, apiMetrics, false},
		{"another namespace → adapter API", other, nil, adapterHTTPS, true},
		{"prometheus → adapter self-metrics", "monitoring", map[string]string{"app": "prometheus"}, adapterMetrics, true},
		{"another namespace → adapter self-metrics", other, nil, adapterMetrics, false},
	}
	var wg sync.WaitGroup
	results := make([]string, len(flows))
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, out, err := dialFrom(f, fmt.Sprintf("np-%d-%d", i, time.Now().UnixNano()%100000))
			switch {
			case err != nil:
				results[i] = fmt.Sprintf("%s: %v", f.name, err)
			case ok != f.allowed:
				results[i] = fmt.Sprintf("%s (%s): connected=%v, want %v: %s", f.name, f.dest, ok, f.allowed, strings.TrimSpace(out))
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

// podAddress is pod IP:port of the first pod matching selector (metrics
// ports are not behind Services).
func podAddress(t *testing.T, ns, selector string, port int) string {
	t.Helper()
	pods, err := readyPods(context.Background(), ns, selector)
	if err != nil || len(pods) == 0 {
		t.Fatalf("no ready pod %s in %s: %v", selector, ns, err)
	}
	return fmt.Sprintf("%s:%d", pods[0].Status.PodIP, port)
}

// dialFrom starts a pod with the flow's namespace and labels, waits until
// the firewall has rules for it (kube-router programs a new pod's address
// a moment after it starts; before that its traffic is not yet judged),
// then runs nodeprobe dial in it through kubectl exec.
func dialFrom(f flow, name string) (bool, string, error) {
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.namespace, Labels: f.labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			SecurityContext:               restrictedPod(),
			AutomountServiceAccountToken:  ptr.To(false),
			Containers: []corev1.Container{{
				Name: "probe", Image: probeImage,
				Args: []string{"sleep"}, SecurityContext: restrictedContainer(),
			}},
		},
	}
	if _, err := client.CoreV1().Pods(f.namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return false, "", err
	}
	defer func() {
		_ = client.CoreV1().Pods(f.namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	}()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if time.Now().After(deadline) {
			return false, "", fmt.Errorf("pod %s/%s: not running with firewall rules within 90 s", f.namespace, name)
		}
		p, err := client.CoreV1().Pods(f.namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && firewallKnows(p.Status.PodIP) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	out, err := execKubectl("-n", f.namespace, "exec", name, "--", "/usr/local/bin/nodeprobe", "dial", f.dest)
	if err != nil && !strings.Contains(err.Error(), "exit status 1") {
		return false, out, fmt.Errorf("kubectl exec: %v: %s", err, out)
	}
	return err == nil, out, nil
}

// firewallKnows reports whether kube-router's rules name the pod's address
// (its per-pod chains are jumped to by source and destination address).
func firewallKnows(ip string) bool {
	out, err := exec.Command("iptables-save", "-t", "filter").Output()
	return err == nil && strings.Contains(string(out), " "+ip+"/32 ")
}
