package promsource

import (
	"strings"
	"testing"
)

// How a refused client certificate surfaces depends on when the server's
// TLS 1.3 alert arrives; each form seen must name the flag to fix (the
// first three were seen in TestPrometheusOverTLSWithClientCertificates'
// runs; the HTTP/2 one failed a CI run before it was recognised).
func TestHintNamesTheClientCertificateFlag(t *testing.T) {
	for _, msg := range []string{
		"remote error: tls: certificate required",
		"write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe",
		"read: connection reset by peer",
		`Post "https://127.0.0.1:41241/api/v1/query": http2: client conn could not be established`,
	} {
		if h := hint("https://prometheus:9090", msg); !strings.Contains(h, "--prometheus-client-tls-cert-file") {
			t.Errorf("%q: hint %q", msg, h)
		}
	}
	if h := hint("http://prometheus:9090", "connection reset by peer"); h != "" {
		t.Errorf("plain HTTP reset: hint %q, want none", h)
	}
}
