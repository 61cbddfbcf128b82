package promsource_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/testkit/testpki"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// startTLSPrometheus runs the real Prometheus serving HTTPS that requires
// a client certificate signed by the pki's CA (its --web.config.file).
func startTLSPrometheus(t *testing.T, p testpki.PKI) string {
	t.Helper()
	dir := t.TempDir()
	web := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: %s\n",
		p.Path("server.crt"), p.Path("server.key"), p.Path("ca.crt"))
	_ = os.WriteFile(filepath.Join(dir, "web.yml"), []byte(web), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte("global: {scrape_interval: 15s}\n"), 0o644)
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	cmd := exec.Command(promtest.Binary(t), "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--web.config.file="+filepath.Join(dir, "web.yml"))
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// Ready once it accepts connections (its answers need a client
	// certificate, which the check below does not have).
	testproc.Eventually(t, 60*time.Second, "Prometheus listening", func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	return "https://" + addr
}

func check(o promsource.ClientOptions) error {
	src, err := promsource.New(o, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return src.Check(ctx)
}

// The real Prometheus over TLS with client-certificate auth: the flags a
// prometheus-adapter Deployment uses work unchanged, and each way of
// getting them wrong is an error naming the flag to fix.
func TestPrometheusOverTLSWithClientCertificates(t *testing.T) {
	p := testpki.New(t, t.TempDir(), testpki.Options{Name: "prometheus"})
	other := testpki.New(t, t.TempDir(), testpki.Options{Name: "other"})
	promURL := startTLSPrometheus(t, p)
	good := promsource.ClientOptions{URL: promURL, Timeout: 10 * time.Second, CAFile: p.Path("ca.crt"),
		ClientCertFile: p.Path("client.crt"), ClientKeyFile: p.Path("client.key")}
	testproc.Eventually(t, 30*time.Second, "a query over TLS with a client certificate", func() error { return check(good) })

	for _, tc := range []struct {
		name string
		o    func(o *promsource.ClientOptions)
		want string
	}{
		{"wrong CA", func(o *promsource.ClientOptions) { o.CAFile = other.Path("ca.crt") }, "--prometheus-ca-file"},
		{"no client certificate", func(o *promsource.ClientOptions) { o.ClientCertFile, o.ClientKeyFile = "", "" }, "--prometheus-client-tls-cert-file"},
		{"client certificate of another CA", func(o *promsource.ClientOptions) {
			o.ClientCertFile, o.ClientKeyFile = other.Path("client.crt"), other.Path("client.key")
		}, "--prometheus-client-tls-cert-file"},
		{"CA file missing", func(o *promsource.ClientOptions) { o.CAFile = "/nonexistent/ca.crt" }, "--prometheus-ca-file"},
		{"cert without key", func(o *promsource.ClientOptions) { o.ClientKeyFile = "" }, "--prometheus-client-tls-key-file"},
		{"bad verb", func(o *promsource.ClientOptions) { o.Verb = "PUT" }, "--prometheus-verb"},
		{"HTTP/2 off still works", func(o *promsource.ClientOptions) { o.DisableHTTP2 = true }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.o(&o)
			err := check(o)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("err = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one naming %s", err, tc.want)
			}
			if err != nil {
				t.Logf("%v", err)
			}
		})
	}
}

// recordingProxy forwards to a real Prometheus and records what arrives;
// it refuses requests without the expected bearer token.
type recordingProxy struct {
	*httptest.Server
	mu       sync.Mutex
	token    string
	requests []*http.Request
}

func newRecordingProxy(t *testing.T, target, token string) *recordingProxy {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &recordingProxy{token: token}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests = append(p.requests, r.Clone(r.Context()))
		want := "Bearer " + p.token
		p.mu.Unlock()
		if r.Header.Get("Authorization") != want {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *recordingProxy) last() *http.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[len(p.requests)-1]
}

// Through a proxy that checks credentials, as Thanos or Mimir behind an
// auth proxy are reached: the token file (re-read when it rotates), the
// tenant header and the verb arrive.
func TestTokenHeadersAndVerbArriveThroughAProxy(t *testing.T) {
	promURL := promtest.StartPrometheus(t, nil, "15s")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	_ = os.WriteFile(tokenFile, []byte("first-token\n"), 0o600)
	proxy := newRecordingProxy(t, promURL, "first-token")
	o := promsource.ClientOptions{URL: proxy.URL, Timeout: 10 * time.Second, TokenFile: tokenFile,
		Headers: []string{"X-Scope-OrgID=tenant-a", "X-Extra: two words"}, Verb: "GET"}
	if err := check(o); err != nil {
		t.Fatal(err)
	}
	r := proxy.last()
	if r.Method != http.MethodGet || r.URL.Query().Get("query") != "vector(1)" || r.Header.Get("X-Scope-OrgID") != "tenant-a" || r.Header.Get("X-Extra") != "two words" {
		t.Fatalf("arrived: %s %s %v", r.Method, r.URL, r.Header)
	}
	o.Verb = "POST"
	if err := check(o); err != nil {
		t.Fatal(err)
	}
	if r := proxy.last(); r.Method != http.MethodPost {
		t.Fatalf("verb POST arrived as %s", r.Method)
	}

	// The token rotates: the new one is sent (the source re-reads the
	// file), and a stale one is refused with an error naming the flag.
	src, err := promsource.New(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	proxy.mu.Lock()
	proxy.token = "second-token"
	proxy.mu.Unlock()
	ctx := context.Background()
	if err := src.Check(ctx); err == nil || !strings.Contains(err.Error(), "--prometheus-token-file") {
		t.Fatalf("with the old token: %v, want a refusal naming --prometheus-token-file", err)
	}
	time.Sleep(1100 * time.Millisecond) // the file is looked at once a second
	_ = os.WriteFile(tokenFile, []byte("second-token\n"), 0o600)
	now := time.Now().Add(2 * time.Second)
	_ = os.Chtimes(tokenFile, now, now)
	time.Sleep(1100 * time.Millisecond)
	if err := src.Check(ctx); err != nil {
		t.Fatalf("after the token rotated: %v", err)
	}
	if got := proxy.last().Header.Get("Authorization"); got != "Bearer second-token" {
		t.Fatalf("Authorization %q after rotation", got)
	}
}
