package upstream_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/endpoints/request"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/upstream"
	"github.com/purchase-system/purchase-system/testkit/testpki"
)

// provider is a metrics API server as KEDA's answers: HTTPS with a
// serving certificate for its Service name, a client certificate required
// and verified against the CA it trusts for front proxies, the caller read
// from the X-Remote-* headers (a request that names no user is 401, as
// KEDA's is). It records what it was asked.
type provider struct {
	srv *httptest.Server
	pki testpki.PKI

	mu      sync.Mutex
	callers []string // X-Remote-User|groups|client CN, per request
	paths   []string
}

func newProvider(t *testing.T, external []string) *provider {
	t.Helper()
	p := &provider{pki: testpki.New(t, t.TempDir(), testpki.Options{Name: "keda", ServerNames: []string{"keda-operator-metrics-apiserver.keda.svc"}, ClientName: "purchase-metrics-adapter"})}
	pem, err := os.ReadFile(p.pki.Path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(p.pki.Path("server.crt"), p.pki.Path("server.key"))
	if err != nil {
		t.Fatal(err)
	}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := ""
		if len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		p.mu.Lock()
		p.callers = append(p.callers, r.Header.Get("X-Remote-User")+"|"+strings.Join(r.Header.Values("X-Remote-Group"), ",")+"|"+cn)
		p.paths = append(p.paths, r.URL.RequestURI())
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Header.Get("X-Remote-User") == "":
			// A front proxy's certificate without a user in its
			// headers authenticates no one (KEDA's metrics server has
			// no anonymous access): discovery too must name someone.
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`))
		case r.URL.Path == "/apis/external.metrics.k8s.io/v1beta1":
			list := metav1.APIResourceList{GroupVersion: "external.metrics.k8s.io/v1beta1"}
			for _, n := range external {
				list.APIResources = append(list.APIResources, metav1.APIResource{Name: n, Namespaced: true, Kind: "ExternalMetricValueList", Verbs: []string{"get"}})
			}
			_ = json.NewEncoder(w).Encode(list)
		case r.URL.Path == "/apis/custom.metrics.k8s.io/v1beta2":
			_ = json.NewEncoder(w).Encode(metav1.APIResourceList{GroupVersion: "custom.metrics.k8s.io/v1beta2",
				APIResources: []metav1.APIResource{{Name: "pods/queue_length", Namespaced: true}}})
		case strings.HasPrefix(r.URL.Path, "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-kafka-orders"):
			_, _ = w.Write([]byte(`{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":[{"metricName":"s0-kafka-orders","metricLabels":null,"timestamp":"2026-12-05T12:00:00Z","value":"42"}]}`))
		case strings.HasPrefix(r.URL.Path, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/queue_length"):
			_, _ = w.Write([]byte(`{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":[{"describedObject":{"kind":"Pod","namespace":"shop","name":"worker-1","apiVersion":"/v1"},"metric":{"name":"queue_length"},"timestamp":"2026-12-05T12:00:00Z","value":"7"}]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no such metric","reason":"NotFound","code":404}`))
		}
	}))
	p.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	return p
}

func (p *provider) spec(t *testing.T, claims ...string) upstream.Spec {
	t.Helper()
	s := upstream.Spec{Name: "keda", URL: p.srv.URL, CAFile: p.pki.Path("ca.crt"), Claims: claims}
	s.Service.Namespace, s.Service.Name, s.Service.Port = "keda", "keda-operator-metrics-apiserver", 443
	if err := s.Validate("test"); err != nil {
		t.Fatal(err)
	}
	return s
}

func (p *provider) upstream(t *testing.T, claims ...string) *upstream.Upstream {
	t.Helper()
	u, err := upstream.New(p.spec(t, claims...), upstream.Options{ClientCertFile: p.pki.Path("client.crt"), ClientKeyFile: p.pki.Path("client.key")})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// hpa is the HPA controller's identity, as the API server passes it.
func hpa() context.Context {
	return request.WithUser(context.Background(), &user.DefaultInfo{Name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
		Groups: []string{"system:serviceaccounts", "system:authenticated"}})
}

// ours serves the lag metric.
type ours struct{}

func (ours) ListCustom() []cmprovider.CustomMetricInfo { return nil }
func (ours) ListExternal() []cmprovider.ExternalMetricInfo {
	return []cmprovider.ExternalMetricInfo{{Metric: "kafka_consumergroup_lag"}}
}

// A KEDA metric, claimed by pattern (KEDA's discovery lists only
// "externalmetrics"), reaches KEDA with the caller's identity in the
// front-proxy headers and the adapter's client certificate, and comes back
// as KEDA answered it.
func TestAClaimedMetricGoesToItsUpstreamAsTheCaller(t *testing.T) {
	p := newProvider(t, []string{"externalmetrics"})
	set := upstream.NewSet([]*upstream.Upstream{p.upstream(t, "^s[0-9]+-")}, nil, nil)
	set.DiscoverAll(context.Background(), ours{})

	u, err := set.ExternalOwner("s0-kafka-orders", false)
	if err != nil || u == nil {
		t.Fatalf("owner of s0-kafka-orders: %v %v, want upstream keda", u, err)
	}
	sel, _ := labels.Parse("scaledobject.keda.sh/name=orders")
	list, err := u.External(hpa(), "shop", "s0-kafka-orders", sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Value.String() != "42" || list.Items[0].MetricName != "s0-kafka-orders" {
		t.Errorf("answer %+v, want KEDA's 42", list.Items)
	}
	p.mu.Lock()
	last, path := p.callers[len(p.callers)-1], p.paths[len(p.paths)-1]
	p.mu.Unlock()
	if want := "system:serviceaccount:kube-system:horizontal-pod-autoscaler|system:serviceaccounts,system:authenticated|purchase-metrics-adapter"; last != want {
		t.Errorf("the upstream saw caller %q, want %q (user|groups|client certificate)", last, want)
	}
	if !strings.Contains(path, "labelSelector=scaledobject.keda.sh%2Fname%3Dorders") {
		t.Errorf("path %s lost the selector", path)
	}

	// Ours stays ours; an unknown name belongs to nobody.
	if u, err := set.ExternalOwner("kafka_consumergroup_lag", true); u != nil || err != nil {
		t.Errorf("kafka_consumergroup_lag: %v %v, want served here", u, err)
	}
	if u, err := set.ExternalOwner("nothing_like_it", false); u != nil || err != nil {
		t.Errorf("an unclaimed name: %v %v, want no owner", u, err)
	}
}

// Discovery lists the union; custom metrics are forwarded with their
// selector; the upstream's own errors keep their code.
func TestDiscoveryAndCustomMetricsAndTheUpstreamsErrors(t *testing.T) {
	p := newProvider(t, []string{"externalmetrics"})
	set := upstream.NewSet([]*upstream.Upstream{p.upstream(t)}, nil, nil)
	set.DiscoverAll(context.Background(), ours{})
	if got := set.ListExternal(); len(got) != 1 || got[0].Metric != "externalmetrics" {
		t.Errorf("external list %v", got)
	}
	// Nobody asked: the adapter asks as itself, authenticated.
	p.mu.Lock()
	for i, path := range p.paths {
		if want := "purchase-metrics-adapter|system:authenticated|purchase-metrics-adapter"; p.callers[i] != want {
			t.Errorf("discovery %s asked as %q, want %q", path, p.callers[i], want)
		}
	}
	p.mu.Unlock()
	pods := schema.GroupResource{Resource: "pods"}
	if got := set.ListCustom(); len(got) != 1 || got[0].Metric != "queue_length" || got[0].GroupResource != pods || !got[0].Namespaced {
		t.Errorf("custom list %+v", got)
	}
	u, err := set.CustomOwner("queue_length", pods, false)
	if err != nil || u == nil {
		t.Fatalf("owner of queue_length: %v %v", u, err)
	}
	sel, _ := labels.Parse("app=worker")
	list, err := u.Custom(hpa(), upstream.CustomRequest{Info: cmprovider.CustomMetricInfo{GroupResource: pods, Namespaced: true, Metric: "queue_length"}, Namespace: "shop", Selector: sel})
	if err != nil || len(list.Items) != 1 || list.Items[0].Value.String() != "7" || list.Items[0].DescribedObject.Name != "worker-1" {
		t.Fatalf("custom answer %+v %v", list, err)
	}
	_, err = u.External(hpa(), "shop", "s9-missing", nil)
	var se *apierrors.StatusError
	if !errors.As(err, &se) || se.ErrStatus.Code != 404 || !strings.Contains(se.ErrStatus.Message, "upstream keda: no such metric") {
		t.Errorf("the upstream's 404: %v, want it passed on, naming the upstream", err)
	}
}

// An upstream that is down answers 503 naming it; its last list is kept.
func TestAnUpstreamDownAnswers503ForItsMetricsOnly(t *testing.T) {
	p := newProvider(t, []string{"externalmetrics"})
	u := p.upstream(t, "^s[0-9]+-")
	set := upstream.NewSet([]*upstream.Upstream{u}, nil, nil)
	set.DiscoverAll(context.Background(), ours{})
	p.srv.Close()
	set.DiscoverAll(context.Background(), ours{})
	if got := set.ListExternal(); len(got) != 1 {
		t.Errorf("after a failed discovery the list is %v, want the last one kept", got)
	}
	_, err := u.External(hpa(), "shop", "s0-kafka-orders", nil)
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "upstream keda") {
		t.Errorf("upstream down: %v, want 503 naming it", err)
	}
	if u, err := set.ExternalOwner("kafka_consumergroup_lag", true); u != nil || err != nil {
		t.Errorf("ours while the upstream is down: %v %v", u, err)
	}
}

// A name two providers claim is served by neither, and the error names
// both: an upstream's discovery listing one of ours, or two upstreams.
func TestANameClaimedTwiceIsRefusedNamingBoth(t *testing.T) {
	p := newProvider(t, []string{"kafka_consumergroup_lag", "externalmetrics"})
	q := newProvider(t, []string{"externalmetrics"})
	a := p.upstream(t)
	bSpec := q.spec(t, "^s[0-9]+-")
	bSpec.Name = "other"
	b, err := upstream.New(bSpec, upstream.Options{ClientCertFile: q.pki.Path("client.crt"), ClientKeyFile: q.pki.Path("client.key")})
	if err != nil {
		t.Fatal(err)
	}
	set := upstream.NewSet([]*upstream.Upstream{a, b}, nil, nil)
	set.DiscoverAll(context.Background(), ours{})
	conflicts := set.CheckConflicts(ours{})
	want := []string{
		"custom queue_length on pods (upstream keda, upstream other)",
		"external externalmetrics (upstream keda, upstream other)",
		"external kafka_consumergroup_lag (purchase-metrics-adapter, upstream keda)",
	}
	if strings.Join(conflicts, "\n") != strings.Join(want, "\n") {
		t.Errorf("conflicts %q, want %q", conflicts, want)
	}
	_, err = set.ExternalOwner("kafka_consumergroup_lag", true)
	var se *apierrors.StatusError
	if !errors.As(err, &se) || se.ErrStatus.Code != http.StatusConflict ||
		!strings.Contains(se.ErrStatus.Message, "purchase-metrics-adapter and upstream keda") {
		t.Errorf("kafka_consumergroup_lag claimed twice: %v, want 409 naming both", err)
	}
}

func TestSpecsAreChecked(t *testing.T) {
	for name, mutate := range map[string]func(*upstream.Spec){
		"no CA":        func(s *upstream.Spec) { s.CAFile = "" },
		"bad name":     func(s *upstream.Spec) { s.Name = "KEDA!" },
		"no service":   func(s *upstream.Spec) { s.Service.Name = "" },
		"bad api":      func(s *upstream.Spec) { s.APIs = []string{"resource"} },
		"bad claim":    func(s *upstream.Spec) { s.Claims = []string{"("} },
		"plain http":   func(s *upstream.Spec) { s.URL = "http://10.0.0.1:443" },
		"its own name": func(s *upstream.Spec) { s.Name = upstream.Self },
	} {
		s := upstream.Spec{Name: "keda", CAFile: "/ca.crt"}
		s.Service.Namespace, s.Service.Name, s.Service.Port = "keda", "keda-operator-metrics-apiserver", 443
		mutate(&s)
		if err := s.Validate("config.yaml: upstreams[0]"); err == nil || !strings.Contains(err.Error(), "upstreams[0]") {
			t.Errorf("%s: %v, want an error naming the entry", name, err)
		}
	}
}
