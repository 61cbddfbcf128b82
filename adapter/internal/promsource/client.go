package promsource

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ClientOptions say how to reach Prometheus (or Thanos, Cortex, Mimir in
// front of it). The flag names are prometheus-adapter's, so its users'
// Deployments move over unchanged; every error names the flag to fix.
type ClientOptions struct {
	URL     string        // --prometheus-url
	Timeout time.Duration // --prometheus-timeout
	// AuthInCluster: the pod's service account token and cluster CA
	// (--prometheus-auth-incluster), e.g. for kube-rbac-proxy in front of
	// Prometheus.
	AuthInCluster bool
	// AuthConfig: a kubeconfig file whose current context's server
	// credentials (CA, client certificate, token) are used
	// (--prometheus-auth-config).
	AuthConfig string
	CAFile     string // --prometheus-ca-file
	// ClientCertFile and ClientKeyFile: a client certificate
	// (--prometheus-client-tls-cert-file, --prometheus-client-tls-key-file).
	ClientCertFile, ClientKeyFile string
	// TokenFile: a bearer token, re-read when the file changes (a
	// projected service account token rotates) (--prometheus-token-file).
	TokenFile string
	// Headers: "Name: value" or "Name=value", sent on every request, e.g.
	// X-Scope-OrgID for a multi-tenant backend (--prometheus-header).
	Headers []string
	// Verb: GET or POST for queries (--prometheus-verb). POST keeps long
	// queries out of URLs and logs.
	Verb string
	// DisableHTTP2 (--disable-http2).
	DisableHTTP2 bool
}

// HTTPClient builds the client that talks to Prometheus.
func (o ClientOptions) HTTPClient() (*http.Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--prometheus-url %q is not an http:// or https:// URL", o.URL)
	}
	verb := strings.ToUpper(o.Verb)
	if verb == "" {
		verb = http.MethodPost
	}
	if verb != http.MethodGet && verb != http.MethodPost {
		return nil, fmt.Errorf("--prometheus-verb %q: use GET or POST", o.Verb)
	}
	if o.AuthInCluster && o.AuthConfig != "" {
		return nil, errors.New("--prometheus-auth-incluster and --prometheus-auth-config both say where credentials come from: use one")
	}
	if (o.ClientCertFile == "") != (o.ClientKeyFile == "") {
		return nil, errors.New("--prometheus-client-tls-cert-file and --prometheus-client-tls-key-file go together: set both or neither")
	}
	var rt http.RoundTripper
	if o.AuthInCluster || o.AuthConfig != "" {
		rt, err = kubeconfigTransport(o)
	} else {
		rt, err = tlsTransport(o)
	}
	if err != nil {
		return nil, err
	}
	if o.TokenFile != "" {
		tr, err := newTokenFile(o.TokenFile, rt)
		if err != nil {
			return nil, err
		}
		rt = tr
	}
	if len(o.Headers) > 0 {
		h := http.Header{}
		for _, kv := range o.Headers {
			name, value, ok := cutHeader(kv)
			if !ok {
				return nil, fmt.Errorf("--prometheus-header %q: want Name=value or Name: value", kv)
			}
			h.Add(name, value)
		}
		rt = &headers{h: h, next: rt}
	}
	if verb == http.MethodGet {
		rt = &getOnly{next: rt}
	}
	return &http.Client{Transport: rt, Timeout: o.Timeout}, nil
}

func cutHeader(kv string) (string, string, bool) {
	i := strings.IndexAny(kv, "=:")
	if i <= 0 {
		return "", "", false
	}
	return strings.TrimSpace(kv[:i]), strings.TrimSpace(kv[i+1:]), true
}

// tlsTransport is a transport with the CA and client certificate the
// options name (none: the system's roots).
func tlsTransport(o ClientOptions) (http.RoundTripper, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--prometheus-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--prometheus-ca-file %s: no PEM certificate in it", o.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	if o.ClientCertFile != "" {
		// Read on every handshake, so a renewed certificate is used
		// without a restart.
		if _, err := tls.LoadX509KeyPair(o.ClientCertFile, o.ClientKeyFile); err != nil {
			return nil, fmt.Errorf("--prometheus-client-tls-cert-file/--prometheus-client-tls-key-file: %w", err)
		}
		tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(o.ClientCertFile, o.ClientKeyFile)
			if err != nil {
				return nil, fmt.Errorf("--prometheus-client-tls-cert-file: %w", err)
			}
			return &c, nil
		}
	}
	if o.DisableHTTP2 {
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return tr, nil
}

// kubeconfigTransport takes credentials from a kubeconfig or the pod's
// service account, as prometheus-adapter does; --prometheus-ca-file and
// the client certificate flags, when also set, override the kubeconfig's.
func kubeconfigTransport(o ClientOptions) (http.RoundTripper, error) {
	var cfg *rest.Config
	var err error
	flag := "--prometheus-auth-config"
	if o.AuthInCluster {
		flag = "--prometheus-auth-incluster"
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.AuthConfig}, &clientcmd.ConfigOverrides{}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if o.CAFile != "" {
		cfg.TLSClientConfig.CAFile, cfg.TLSClientConfig.CAData = o.CAFile, nil
	}
	if o.ClientCertFile != "" {
		cfg.TLSClientConfig.CertFile, cfg.TLSClientConfig.CertData = o.ClientCertFile, nil
		cfg.TLSClientConfig.KeyFile, cfg.TLSClientConfig.KeyData = o.ClientKeyFile, nil
	}
	if o.DisableHTTP2 {
		cfg.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return tr, nil
}

// tokenFile adds a bearer token read from a file, again whenever the file
// changes.
type tokenFile struct {
	path string
	next http.RoundTripper

	mu      sync.Mutex
	token   string
	modTime time.Time
	checked time.Time
}

func newTokenFile(path string, next http.RoundTripper) (*tokenFile, error) {
	t := &tokenFile{path: path, next: next}
	if _, err := t.current(); err != nil {
		return nil, err
	}
	return t, nil
}

// current returns the token, looking at the file at most once a second.
func (t *tokenFile) current() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.checked) < time.Second && t.token != "" {
		return t.token, nil
	}
	t.checked = time.Now()
	fi, err := os.Stat(t.path)
	if err != nil {
		if t.token != "" {
			return t.token, nil // keep the last one while the file is being replaced
		}
		return "", fmt.Errorf("--prometheus-token-file: %w", err)
	}
	if t.token != "" && fi.ModTime().Equal(t.modTime) {
		return t.token, nil
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return "", fmt.Errorf("--prometheus-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--prometheus-token-file %s is empty", t.path)
	}
	t.token, t.modTime = tok, fi.ModTime()
	return tok, nil
}

func (t *tokenFile) RoundTrip(r *http.Request) (*http.Response, error) {
	tok, err := t.current()
	if err != nil {
		return nil, err
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	return t.next.RoundTrip(r)
}

// headers sets fixed headers on every request.
type headers struct {
	h    http.Header
	next http.RoundTripper
}

func (h *headers) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range h.h {
		r.Header[k] = vs
	}
	return h.next.RoundTrip(r)
}

// getOnly turns the form POSTs of Prometheus' Go client into GETs with the
// same parameters in the URL, for --prometheus-verb=GET (proxies that
// allow only GET).
type getOnly struct{ next http.RoundTripper }

func (g *getOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" || r.Body == nil {
		return g.next.RoundTrip(r)
	}
	b, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		return nil, err
	}
	form, err := url.ParseQuery(string(b))
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	for k, vs := range form {
		for _, v := range vs {
			q.Add(k, v)
		}
	}
	get := r.Clone(r.Context())
	get.Method, get.Body, get.ContentLength, get.GetBody = http.MethodGet, nil, 0, nil
	get.Header.Del("Content-Type")
	get.URL.RawQuery = q.Encode()
	return g.next.RoundTrip(get)
}
