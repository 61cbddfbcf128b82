// Package keda checks KEDA v2.21.0 behind the metrics adapter on the local
// Kubernetes (scripts/keda.sh deploy: manifests/keda/install, its demo in
// keda-demo, the adapter with components/keda-upstream). It runs while the
// end-to-end scenario loads the system (scripts/e2e.sh starts both), so
// KEDA and the adapter's own HPAs scale in the same cluster at the same
// time:
//
//	go test ./e2e/keda -args -kubeconfig KUBECONFIG   (scripts/e2e.sh runs it with WITH=keda)
package keda

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/autoscaling"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

var (
	kubeconfig   = flag.String("kubeconfig", "", "kubeconfig of the local Kubernetes the system and KEDA run on")
	sideBySideIn = flag.Duration("side-by-side-max", 8*time.Minute, "give up when KEDA and the system's HPAs have not all scaled out within this (the load is the scenario's)")
)

const (
	system      = "purchase-system"
	demo        = "keda-demo"
	kedaNS      = "keda"
	kedaHPA     = "keda-hpa-customer-management-api-scaler"
	kedaMetric  = "s0-kafka-purchases"
	kedaServer  = "keda-operator-metrics-apiserver"
	apiService  = "v1beta1.external.metrics.k8s.io"
	kedaRawPath = "/apis/external.metrics.k8s.io/v1beta1/namespaces/" + demo + "/" + kedaMetric
	// What KEDA's HPA asks with (KEDA names its ScaledObject in the selector).
	kedaSelector = "scaledobject.keda.sh/name=customer-management-api-scaler"
)

func TestKEDAScalesBesideTheAdapter(t *testing.T) {
	if *kubeconfig == "" {
		t.Skip("needs a cluster with KEDA behind the adapter and load on the system: make test runs it beside the scenario (scripts/e2e.sh, WITH=keda); by hand, with make run WITH=keda and make load going: go test ./e2e/keda -args -kubeconfig .cache/devcluster/kubeconfig")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	adapterCA := adapterCABundle(t, c)
	checkAPIServiceIsTheAdapters(t, c, adapterCA)

	t.Run("side by side", func(t *testing.T) { sideBySide(t, c) })
	t.Run("KEDA's install re-applied", func(t *testing.T) {
		reapply(t)
		checkAPIServiceIsTheAdapters(t, c, adapterCA)
		testproc.Eventually(t, time.Minute, "KEDA's metric through the adapter after the re-apply", func() error {
			_, err := kedaValue(ctx, c)
			return err
		})
	})
	t.Run("KEDA's metrics server stopped", func(t *testing.T) { kedaDown(t, c) })
}

// adapterCABundle is the CA the adapter's serving certificate is signed
// with, as its APIServices carry it.
func adapterCABundle(t *testing.T, c kubernetes.Interface) []byte {
	s, err := c.CoreV1().Secrets("monitoring").Get(context.Background(), "purchase-metrics-adapter-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Data["ca.crt"]
}

// checkAPIServiceIsTheAdapters: the external metrics APIService points at
// the adapter, with the adapter's CA (KEDA's operator, left to itself,
// writes its own CA there at every start), and is available.
func checkAPIServiceIsTheAdapters(t *testing.T, c kubernetes.Interface, adapterCA []byte) {
	t.Helper()
	b, err := c.Discovery().RESTClient().Get().AbsPath("/apis/apiregistration.k8s.io/v1/apiservices/" + apiService).DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var as struct {
		Spec struct {
			Service  struct{ Namespace, Name string }
			CABundle []byte `json:"caBundle"`
		}
		Status struct {
			Conditions []struct{ Type, Status, Message string }
		}
	}
	if err := json.Unmarshal(b, &as); err != nil {
		t.Fatal(err)
	}
	if got := as.Spec.Service.Namespace + "/" + as.Spec.Service.Name; got != "monitoring/purchase-metrics-adapter" {
		t.Fatalf("%s points at %s, want the adapter (monitoring/purchase-metrics-adapter)", apiService, got)
	}
	if !bytes.Equal(as.Spec.CABundle, adapterCA) {
		t.Fatalf("%s's caBundle is not the adapter's CA any more (KEDA's operator patches it unless --enable-apiservice-patching=false)", apiService)
	}
	for _, cond := range as.Status.Conditions {
		if cond.Type == "Available" && cond.Status != "True" {
			t.Fatalf("%s is not available: %s", apiService, cond.Message)
		}
	}
}

// sideBySide: while the scenario's load runs, KEDA scales its copy of the
// consumer on its metric, served through the adapter, and the system's
// HPAs scale on the request rate and on lag, all seen in one window.
func sideBySide(t *testing.T, c kubernetes.Interface) {
	ctx := context.Background()
	var keda, web, consumer string // what was seen, once seen
	deadline := time.Now().Add(*sideBySideIn)
	for ; time.Now().Before(deadline); time.Sleep(5 * time.Second) {
		d, err := autoscaling.Read(ctx, c, demo)
		if err != nil {
			t.Logf("reading %s: %v", demo, err)
			continue
		}
		s, err := autoscaling.Read(ctx, c, system)
		if err != nil {
			t.Logf("reading %s: %v", system, err)
			continue
		}
		if h, ok := d.HPAs[kedaHPA]; ok && keda == "" && h.Desired >= 2 && above(h, kedaMetric) {
			v, err := kedaValue(ctx, c)
			if err == nil {
				keda = fmt.Sprintf("KEDA's HPA %d→%d replicas on %s (%s now through the API server)", h.Current, h.Desired, metricLine(h, kedaMetric), v)
				t.Logf("%s: %s", time.Now().Format(time.TimeOnly), keda)
			}
		}
		if h, ok := s.HPAs[autoscaling.WebServer]; ok && web == "" && h.Desired > h.Min && above(h, autoscaling.RequestRate) {
			web = fmt.Sprintf("web server %d→%d replicas on %s", h.Current, h.Desired, metricLine(h, autoscaling.RequestRate))
			t.Logf("%s: %s", time.Now().Format(time.TimeOnly), web)
		}
		if h, ok := s.HPAs[autoscaling.Consumer]; ok && consumer == "" && h.Desired > h.Min && above(h, autoscaling.Lag) {
			consumer = fmt.Sprintf("management API %d→%d replicas on %s", h.Current, h.Desired, metricLine(h, autoscaling.Lag))
			t.Logf("%s: %s", time.Now().Format(time.TimeOnly), consumer)
		}
		if keda != "" && web != "" && consumer != "" {
			return
		}
	}
	t.Fatalf("within %s: KEDA %q, web server %q, management API %q (empty: not seen scaling out on its metric)", *sideBySideIn, keda, web, consumer)
}

// above: the HPA has a value of the metric, over its target (so that
// metric, not another of the HPA's, asks for more replicas).
func above(h autoscaling.HPA, metric string) bool {
	for _, m := range h.Metrics {
		if m.Name == metric && m.Known {
			cur, err1 := resource.ParseQuantity(m.Current)
			tgt, err2 := resource.ParseQuantity(m.Target)
			return err1 == nil && err2 == nil && cur.Cmp(tgt) > 0
		}
	}
	return false
}

func metricLine(h autoscaling.HPA, metric string) string {
	for _, m := range h.Metrics {
		if m.Name == metric {
			return fmt.Sprintf("%s %s/%s", m.Name, m.Current, m.Target)
		}
	}
	return metric
}

// kedaValue is KEDA's metric as its HPA asks for it, through the API
// server (and so the adapter).
func kedaValue(ctx context.Context, c kubernetes.Interface) (string, error) {
	b, err := c.Discovery().RESTClient().Get().AbsPath(kedaRawPath).Param("labelSelector", kedaSelector).DoRaw(ctx)
	if err != nil {
		// The discovery client does not decode a Status of this group:
		// the answer's own message says who failed.
		var st metav1.Status
		if json.Unmarshal(b, &st) == nil && st.Kind == "Status" {
			err = &apierrors.StatusError{ErrStatus: st}
		}
		return "", fmt.Errorf("GET %s: %w", kedaRawPath, err)
	}
	var l struct {
		Items []struct{ Value string }
	}
	if err := json.Unmarshal(b, &l); err != nil || len(l.Items) != 1 {
		return "", fmt.Errorf("GET %s: %d values (%v): %s", kedaRawPath, len(l.Items), err, b)
	}
	return l.Items[0].Value, nil
}

// reapply is what a KEDA upgrade does: its install applied again
// (scripts/keda.sh apply, as deploy does) and its operator restarted,
// which is when KEDA's operator would write its CA into the APIService.
func reapply(t *testing.T) {
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	tools, err := exec.Command(filepath.Join(root, "scripts", "tools.sh"), "path", "kubernetes").Output()
	if err != nil {
		t.Fatal(err)
	}
	kubectl := []string{filepath.Join(strings.TrimSpace(string(tools)), "kubectl"), "--kubeconfig", *kubeconfig}
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run(filepath.Join(root, "scripts", "keda.sh"), append([]string{"apply"}, kubectl...)...)
	run(kubectl[0], append(kubectl[1:], "-n", kedaNS, "rollout", "restart", "deployment/keda-operator")...)
	run(kubectl[0], append(kubectl[1:], "-n", kedaNS, "rollout", "status", "deployment/keda-operator", "--timeout=3m")...)
	// The operator's certificate manager runs once it is elected leader,
	// seconds after it is ready.
	time.Sleep(20 * time.Second)
}

// kedaDown: with KEDA's metrics server stopped, KEDA's metric answers 503
// naming it, and the adapter's own metrics answer as before; then KEDA
// comes back.
func kedaDown(t *testing.T, c kubernetes.Interface) {
	ctx := context.Background()
	scale := func(n int32) {
		t.Helper()
		s, err := c.AppsV1().Deployments(kedaNS).GetScale(ctx, kedaServer, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.Replicas = n
		if _, err := c.AppsV1().Deployments(kedaNS).UpdateScale(ctx, kedaServer, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	scale(0)
	t.Cleanup(func() { scale(1) })
	testproc.Eventually(t, 2*time.Minute, "KEDA's metrics server gone", func() error {
		pods, err := c.CoreV1().Pods(kedaNS).List(ctx, metav1.ListOptions{LabelSelector: "app=keda-metrics-apiserver"})
		if err != nil || len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left (%v)", len(pods.Items), err)
		}
		return nil
	})
	testproc.Eventually(t, time.Minute, "KEDA's metric answers 503", func() error {
		_, err := kedaValue(ctx, c)
		if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "upstream keda") {
			return fmt.Errorf("want 503 naming upstream keda, got %v", err)
		}
		return nil
	})
	s, err := autoscaling.Read(ctx, c, system)
	if err != nil {
		t.Fatal(err)
	}
	if s.LagErr != nil || s.PerPodErr != nil || len(s.PerPod) == 0 {
		t.Fatalf("with KEDA's metrics server down the adapter's own metrics failed: lag %v, request rate %v (%d pods)", s.LagErr, s.PerPodErr, len(s.PerPod))
	}
	t.Logf("KEDA's metrics server stopped: its metric 503, the adapter's lag %s and request rate of %d pods served", autoscaling.Format(s.Lag), len(s.PerPod))
	scale(1)
	testproc.Eventually(t, 3*time.Minute, "KEDA's metric served again", func() error {
		_, err := kedaValue(ctx, c)
		return err
	})
}
