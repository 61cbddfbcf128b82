package clustertest

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// TestAPIServicesVerifyTheAdapterCertificate: the API server reaches the
// adapter verifying its serving certificate against the APIService's
// caBundle (scripts/certs.sh), never with insecureSkipTLSVerify; that the
// APIServices are Available (deploySystem) shows the verification passes.
func TestAPIServicesVerifyTheAdapterCertificate(t *testing.T) {
	deploySystem(t)
	for _, api := range []string{"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io", "v1beta1.metrics.k8s.io"} {
		out := kubectl(t, "get", "apiservice", api, "-o", "jsonpath={.spec.insecureSkipTLSVerify}|{.spec.caBundle}")
		skip, ca, _ := strings.Cut(out, "|")
		if skip == "true" || len(ca) < 100 {
			t.Errorf("%s: insecureSkipTLSVerify=%q, caBundle of %d bytes; want a verified certificate", api, skip, len(ca))
		}
		// metrics-server is Ready once it has scraped twice.
		testproc.Eventually(t, 2*time.Minute, api+" available through its verified certificate", func() error {
			out, err := execKubectl("get", "apiservice", api, "-o", `jsonpath={.status.conditions[?(@.type=="Available")].status} {.status.conditions[?(@.type=="Available")].message}`)
			if err != nil || !strings.HasPrefix(out, "True") {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		})
	}
}

// TestAdapterChecksTokensItself calls the adapter's pod directly, past the
// API server, with service account tokens: it authenticates them itself
// (TokenReview) and authorises them (SubjectAccessReview), so only what
// RBAC grants the HPA controller is answered. (TestMetricsAPIAuthentication
// covers impersonated users and callers without credentials.)
func TestAdapterChecksTokensItself(t *testing.T) {
	deploySystem(t)
	pods := waitReplicas(t, "monitoring", "app=purchase-metrics-adapter", 1)
	direct := "https://" + pods[0].Status.PodIP + ":6443"
	token := func(ns, sa string) string {
		if _, err := execKubectl("-n", ns, "get", "serviceaccount", sa); err != nil {
			kubectl(t, "-n", ns, "create", "serviceaccount", sa)
		}
		return strings.TrimSpace(kubectl(t, "-n", ns, "create", "token", sa, "--duration=10m"))
	}
	hpa, unprivileged := token("kube-system", "horizontal-pod-autoscaler"), token("purchase-system", "default")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		// Who may call is the point here, not the certificate.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	for _, path := range []string{
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_per_second",
		"/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=consumergroup%3Dpurchase-consumer-group%2Ctopic%3Dpurchases",
	} {
		for _, c := range []struct {
			name, bearer string
			ok           func(int) bool
			want         string
		}{
			{"a forged token", "not-a-token", func(s int) bool { return s == 401 }, "401"},
			{"an unprivileged service account", unprivileged, func(s int) bool { return s == 403 }, "403"},
			{"the HPA controller's service account", hpa, func(s int) bool { return s != 401 && s != 403 }, "an answer (not 401/403)"},
		} {
			req, _ := http.NewRequest(http.MethodGet, direct+path, nil)
			req.Header.Set("Authorization", "Bearer "+c.bearer)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !c.ok(resp.StatusCode) {
				t.Errorf("%s with %s: %d %.300s, want %s", path, c.name, resp.StatusCode, b, c.want)
			}
		}
	}
}
