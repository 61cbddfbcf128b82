package keda

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// BenchmarkForwardedToKEDA is the cost of a KEDA metric behind the
// adapter, in one run on the local Kubernetes with KEDA deployed (make run
// WITH=keda): the request KEDA's HPA makes, p50 and p99 over rounds that
// take turns,
//
//   - KEDA alone: straight at KEDA's metrics server, as the API server
//     would call it were the APIService KEDA's (a front-proxy certificate,
//     the HPA controller in X-Remote-User);
//
//   - through the adapter: the same at the adapter's secure port (the API
//     server's front-proxy certificate), which forwards it to KEDA;
//
//   - through the API server: what the HPA controller waits for.
//
//     go test -run '^$' -bench ForwardedToKEDA -benchtime 1x ./e2e/keda -args -kubeconfig .cache/devcluster/kubeconfig
func BenchmarkForwardedToKEDA(b *testing.B) {
	if *kubeconfig == "" {
		b.Skip("needs the local Kubernetes with KEDA behind the adapter: with make run WITH=keda going, pass -kubeconfig .cache/devcluster/kubeconfig (make bench does not run it)")
	}
	root, err := testproc.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	c := kubernetes.NewForConfigOrDie(cfg)
	q := "?" + url.Values{"labelSelector": {kedaSelector}}.Encode()
	const hpaUser, hpaGroup = "system:serviceaccount:kube-system:horizontal-pod-autoscaler", "system:serviceaccounts"

	keda := frontProxy(b, filepath.Join(root, "manifests/components/keda-upstream/generated"), "tls",
		filepath.Join(root, "manifests/components/keda-upstream/generated/keda-ca.crt"), kedaServer+".keda.svc", hpaUser, hpaGroup)
	adapter := frontProxy(b, filepath.Join(root, ".cache/devcluster/pki"), "front-proxy-client",
		filepath.Join(root, "manifests/base/adapter/generated/ca.crt"), "purchase-metrics-adapter.monitoring.svc", hpaUser, hpaGroup)
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ways := []struct {
		name string
		get  func() error
	}{
		{"KEDA alone", getter(keda, "https://"+podIP(b, c, kedaNS, "app=keda-metrics-apiserver")+":6443"+kedaRawPath+q)},
		{"through the adapter", getter(adapter, "https://"+podIP(b, c, "monitoring", "app=purchase-metrics-adapter")+":6443"+kedaRawPath+q)},
		{"through the API server and the adapter", getter(hc, cfg.Host+kedaRawPath+q)},
	}
	const rounds, each = 10, 50
	took := make([][]time.Duration, len(ways))
	for _, w := range ways { // connections made, caches warm
		for range 10 {
			if err := w.get(); err != nil {
				b.Fatalf("%s: %v", w.name, err)
			}
		}
	}
	b.ResetTimer()
	for range rounds {
		for i, w := range ways {
			for range each {
				t0 := time.Now()
				if err := w.get(); err != nil {
					b.Fatalf("%s: %v", w.name, err)
				}
				took[i] = append(took[i], time.Since(t0))
			}
		}
	}
	b.StopTimer()
	for i, w := range ways {
		slices.Sort(took[i])
		p50, p99 := took[i][len(took[i])/2], took[i][len(took[i])*99/100]
		b.Logf("%-40s p50 %6.2f ms  p99 %6.2f ms  (%d requests)", w.name, ms(p50), ms(p99), len(took[i]))
		b.ReportMetric(ms(p50), "p50-ms-"+fmt.Sprint(i))
		b.ReportMetric(ms(p99), "p99-ms-"+fmt.Sprint(i))
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// frontProxy is a client that calls a metrics API server as the API
// server's aggregation layer does: a client certificate the server trusts
// as its requestheader CA's, the caller in X-Remote-User/-Group.
func frontProxy(b *testing.B, dir, name, caFile, serverName, user, group string) *http.Client {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		b.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{MaxIdleConnsPerHost: 4,
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: serverName}}
	return &http.Client{Timeout: 30 * time.Second, Transport: headers{tr, user, group}}
}

// headers adds the caller's identity to every request.
type headers struct {
	next        http.RoundTripper
	user, group string
}

func (h headers) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Remote-User", h.user)
	r.Header.Set("X-Remote-Group", h.group)
	return h.next.RoundTrip(r)
}

func getter(hc *http.Client, u string) func() error {
	return func() error {
		resp, err := hc.Get(u)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %.300s", u, resp.Status, body)
		}
		return err
	}
}

func podIP(b *testing.B, c kubernetes.Interface, ns, selector string) string {
	pods, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			return p.Status.PodIP
		}
	}
	b.Fatalf("no pod %s in %s", selector, ns)
	return ""
}
