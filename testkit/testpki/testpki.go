// Package testpki writes a throwaway CA and certificates for tests of TLS
// clients and servers: a serving certificate for 127.0.0.1 (and any DNS
// names given) and a client certificate, both signed by the CA.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a directory holding ca.crt, server.crt, server.key, client.crt
// and client.key.
type PKI struct{ Dir string }

// Options name what the certificates say.
type Options struct {
	// Name prefixes the CA's common name.
	Name string
	// ServerNames are DNS names of the serving certificate, beside
	// 127.0.0.1.
	ServerNames []string
	// ClientName is the client certificate's common name (default
	// "client"); ClientOrgs its organizations (Kubernetes reads them as
	// groups).
	ClientName string
	ClientOrgs []string
}

// New writes the CA and certificates into dir.
func New(t testing.TB, dir string, o Options) PKI {
	t.Helper()
	if o.ClientName == "" {
		o.ClientName = "client"
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: o.Name + " CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := PKI{Dir: dir}
	p.write(t, "ca.crt", "CERTIFICATE", caDER)
	for i, c := range []struct {
		file    string
		subject pkix.Name
		usage   x509.ExtKeyUsage
	}{
		{"server", pkix.Name{CommonName: "server"}, x509.ExtKeyUsageServerAuth},
		{"client", pkix.Name{CommonName: o.ClientName, Organization: o.ClientOrgs}, x509.ExtKeyUsageClientAuth},
	} {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(2 + i)), Subject: c.subject, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{c.usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: o.ServerNames}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		p.write(t, c.file+".crt", "CERTIFICATE", der)
		p.write(t, c.file+".key", "EC PRIVATE KEY", kder)
	}
	return p
}

func (p PKI) write(t testing.TB, name, typ string, der []byte) {
	if err := os.WriteFile(filepath.Join(p.Dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Path is a file of the PKI: ca.crt, server.crt, server.key, client.crt,
// client.key.
func (p PKI) Path(name string) string { return filepath.Join(p.Dir, name) }
