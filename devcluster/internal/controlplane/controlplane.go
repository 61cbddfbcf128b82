// Package controlplane starts a real Kubernetes control plane on this
// machine from locally built binaries: etcd, kube-apiserver (with the
// aggregation layer configured), kube-controller-manager (HPA included)
// and kube-scheduler. Certificates, kubeconfigs, data and logs live in one
// directory; the processes are daemons that outlive the command.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/pki"
	"github.com/purchase-system/purchase-system/devcluster/node"
)

// Binaries are the control plane programs to run.
type Binaries struct {
	Etcd, APIServer, ControllerManager, Scheduler string
}

// Config describes the control plane.
type Config struct {
	Dir           string // state: pki/, etcd/, kubeconfigs, logs/, pids/
	Bin           Binaries
	APIServerPort int           // on node.HostIP; default 6443
	EtcdPort      int           // client port on 127.0.0.1 (peer port is +1); default 2379
	HPASyncPeriod time.Duration // default 15s
	NodeName      string        // the node whose kubelet the apiserver talks to
	// ControllerManagerArgs are added to kube-controller-manager's flags
	// (a benchmark tunes the HPA controller with them).
	ControllerManagerArgs []string
}

// Component names, as daemons and in logs.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// Components in start order; stopped in reverse.
var Components = []string{Etcd, APIServer, ControllerManager, Scheduler}

// Ports the control plane listens on.
func (c Config) Ports() []node.Port {
	c.defaults()
	return []node.Port{
		{Component: Etcd, Addr: "127.0.0.1", Port: c.EtcdPort},
		{Component: Etcd, Use: "peer", Addr: "127.0.0.1", Port: c.EtcdPort + 1},
		{Component: APIServer, Addr: node.HostIP, Port: c.APIServerPort},
		{Component: ControllerManager, Addr: "127.0.0.1", Port: 10257},
		{Component: Scheduler, Addr: "127.0.0.1", Port: 10259},
	}
}

func (c *Config) defaults() {
	if c.APIServerPort == 0 {
		c.APIServerPort = 6443
	}
	if c.EtcdPort == 0 {
		c.EtcdPort = 2379
	}
	if c.HPASyncPeriod == 0 {
		c.HPASyncPeriod = 15 * time.Second
	}
}

// Paths of what the control plane writes.
func (c Config) pkiDir() string { return filepath.Join(c.Dir, "pki") }

// AuditLog is where the API server records every request to the custom
// and external metrics APIs (the HPA controller's reads, with their
// selectors and latency): who asks for which metric how often, whatever
// adapter serves them.
func (c Config) AuditLog() string { return filepath.Join(c.Dir, "logs", "audit-metrics.log") }

func (c Config) auditPolicy() string { return filepath.Join(c.Dir, "audit-policy.yaml") }

// auditPolicyYAML logs the metrics APIs' requests, nothing else.
const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    resources:
      - group: custom.metrics.k8s.io
      - group: external.metrics.k8s.io
  - level: None
`

// AdminKubeconfig is the cluster-admin kubeconfig users and tests use.
func (c Config) AdminKubeconfig() string { return filepath.Join(c.Dir, "kubeconfig") }

// Kubeconfig is the kubeconfig of a component identity (node, proxy, ...).
func (c Config) Kubeconfig(name string) string {
	return filepath.Join(c.Dir, "kubeconfigs", name+".kubeconfig")
}

// CAFile is the cluster CA every component trusts.
func (c Config) CAFile() string { return filepath.Join(c.pkiDir(), "ca.crt") }

// ServerURL is the API server's address.
func (c Config) ServerURL() string {
	return "https://" + net.JoinHostPort(node.HostIP, strconv.Itoa(c.APIServerPort))
}

// Daemons is where the control plane's processes are tracked.
func (c Config) Daemons() daemon.Dir { return daemon.Dir(c.Dir) }

// Identity is a client certificate the control plane issues for a
// component running beside it.
type Identity struct {
	Name   string   // kubeconfig and file name
	User   string   // certificate CN
	Groups []string // certificate O
}

// Identities every cluster gets.
var (
	Admin                     = Identity{"admin", "kubernetes-admin", []string{"system:masters"}}
	ControllerManagerIdentity = Identity{"controller-manager", "system:kube-controller-manager", nil}
	SchedulerIdentity         = Identity{"scheduler", "system:kube-scheduler", nil}
	// ProxyIdentity is the service proxy's: bound to system:node-proxier by
	// the API server's bootstrap policy.
	ProxyIdentity = Identity{"proxy", "system:kube-proxy", nil}
	// KubeRouterIdentity is the NetworkPolicy firewall's.
	KubeRouterIdentity = Identity{"kube-router", "system:kube-router", nil}
)

// NodeIdentity is the identity of the kubelet of the node called name.
func NodeIdentity(name string) Identity {
	return Identity{"node", "system:node:" + name, []string{"system:nodes"}}
}

// etcdFile is a file of etcd's own PKI. etcd has a CA of its own, as
// kubeadm sets it up: a certificate of the cluster CA (an admin's, a
// node's) is not an etcd client certificate, and only the API server (and
// the launcher's health check) holds one.
func (c Config) etcdFile(name string) string { return filepath.Join(c.pkiDir(), "etcd", name) }

// RegistryTLS are the local registry's mutual TLS files: its own CA, its
// serving certificate, and the client certificate containerd and the
// launcher present (readable by root only, like every key here).
func (c Config) RegistryTLS() node.RegistryTLS {
	p := func(name string) string { return filepath.Join(c.pkiDir(), "registry", name) }
	return node.RegistryTLS{CA: p("ca.crt"), Cert: p("server.crt"), Key: p("server.key"), ClientCert: p("client.crt"), ClientKey: p("client.key")}
}

// certs issues every certificate and key the control plane needs (kept
// across restarts), and the kubeconfigs for ids.
func (c Config) certs(ids ...Identity) error {
	dir := c.pkiDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := pki.LoadOrCreateCA(dir, "ca", "devcluster-ca")
	if err != nil {
		return err
	}
	frontProxyCA, err := pki.LoadOrCreateCA(dir, "front-proxy-ca", "devcluster-front-proxy-ca")
	if err != nil {
		return err
	}
	etcdCA, err := pki.LoadOrCreateCA(filepath.Join(dir, "etcd"), "ca", "devcluster-etcd-ca")
	if err != nil {
		return err
	}
	registryCA, err := pki.LoadOrCreateCA(filepath.Join(dir, "registry"), "ca", "devcluster-registry-ca")
	if err != nil {
		return err
	}
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	for _, l := range []struct {
		ca   *pki.CA
		dir  string
		leaf pki.Leaf
	}{
		{etcdCA, "etcd", pki.Leaf{Name: "server", CommonName: "devcluster-etcd", Server: true, Client: true, IPs: loopback, DNSNames: []string{"localhost"}}},
		{etcdCA, "etcd", pki.Leaf{Name: "peer", CommonName: "devcluster-etcd-peer", Server: true, Client: true, IPs: loopback, DNSNames: []string{"localhost"}}},
		{etcdCA, "etcd", pki.Leaf{Name: "healthcheck-client", CommonName: "devcluster-etcd-healthcheck-client", Client: true}},
		{etcdCA, ".", pki.Leaf{Name: "apiserver-etcd-client", CommonName: "kube-apiserver-etcd-client", Client: true}},
		{registryCA, "registry", pki.Leaf{Name: "server", CommonName: "devcluster-registry", Server: true, IPs: loopback}},
		{registryCA, "registry", pki.Leaf{Name: "client", CommonName: "devcluster-node", Client: true}},
	} {
		if _, _, err := l.ca.Issue(filepath.Join(dir, l.dir), l.leaf); err != nil {
			return fmt.Errorf("issuing %s/%s certificate: %w", l.dir, l.leaf.Name, err)
		}
	}
	leaves := []struct {
		ca   *pki.CA
		leaf pki.Leaf
	}{
		{ca, pki.Leaf{Name: "apiserver", CommonName: "kube-apiserver", Server: true,
			DNSNames: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
			IPs:      []net.IP{net.ParseIP(node.HostIP), net.ParseIP("10.96.0.1"), net.ParseIP("127.0.0.1")}}},
		{ca, pki.Leaf{Name: "apiserver-kubelet-client", CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true}},
		{ca, pki.Leaf{Name: "kubelet", CommonName: c.NodeName, Server: true, IPs: []net.IP{net.ParseIP(node.HostIP)}, DNSNames: []string{c.NodeName}}},
		{frontProxyCA, pki.Leaf{Name: "front-proxy-client", CommonName: "front-proxy-client", Client: true}},
	}
	for _, id := range ids {
		leaves = append(leaves, struct {
			ca   *pki.CA
			leaf pki.Leaf
		}{ca, pki.Leaf{Name: "client-" + id.Name, CommonName: id.User, Organization: id.Groups, Client: true}})
	}
	for _, l := range leaves {
		if _, _, err := l.ca.Issue(dir, l.leaf); err != nil {
			return fmt.Errorf("issuing %s certificate: %w", l.leaf.Name, err)
		}
	}
	if _, _, err := pki.WriteKey(dir, "sa"); err != nil {
		return err
	}
	for _, id := range ids {
		path := c.Kubeconfig(id.Name)
		if id.Name == Admin.Name {
			path = c.AdminKubeconfig()
		}
		if err := c.writeKubeconfig(path, id); err != nil {
			return err
		}
	}
	return nil
}

func (c Config) writeKubeconfig(path string, id Identity) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["devcluster"] = &clientcmdapi.Cluster{Server: c.ServerURL(), CertificateAuthority: c.CAFile()}
	cfg.AuthInfos[id.Name] = &clientcmdapi.AuthInfo{
		ClientCertificate: filepath.Join(c.pkiDir(), "client-"+id.Name+".crt"),
		ClientKey:         filepath.Join(c.pkiDir(), "client-"+id.Name+".key"),
	}
	cfg.Contexts["devcluster"] = &clientcmdapi.Context{Cluster: "devcluster", AuthInfo: id.Name}
	cfg.CurrentContext = "devcluster"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}

func (c Config) specs() map[string]daemon.Spec {
	p := func(name string) string { return filepath.Join(c.pkiDir(), name) }
	etcdURL := "https://127.0.0.1:" + strconv.Itoa(c.EtcdPort)
	peerURL := "https://127.0.0.1:" + strconv.Itoa(c.EtcdPort+1)
	cm := c.Kubeconfig(ControllerManagerIdentity.Name)
	sched := c.Kubeconfig(SchedulerIdentity.Name)
	return map[string]daemon.Spec{
		Etcd: {Name: Etcd, Path: c.Bin.Etcd, Args: []string{
			"--name=devcluster", "--data-dir=" + filepath.Join(c.Dir, "etcd"),
			"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
			"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=devcluster=" + peerURL,
			// TLS both ways, clients and peer alike, as kubeadm sets it
			// up: on loopback every local account could otherwise read
			// and write every object, Secrets and RBAC included.
			"--client-cert-auth=true", "--trusted-ca-file=" + c.etcdFile("ca.crt"),
			"--cert-file=" + c.etcdFile("server.crt"), "--key-file=" + c.etcdFile("server.key"),
			"--peer-client-cert-auth=true", "--peer-trusted-ca-file=" + c.etcdFile("ca.crt"),
			"--peer-cert-file=" + c.etcdFile("peer.crt"), "--peer-key-file=" + c.etcdFile("peer.key"),
			// A throwaway dev cluster: durability of each write is not worth an fsync.
			"--unsafe-no-fsync=true", "--log-level=warn",
		}},
		APIServer: {Name: APIServer, Path: c.Bin.APIServer, Args: []string{
			"--etcd-servers=" + etcdURL,
			"--etcd-cafile=" + c.etcdFile("ca.crt"),
			"--etcd-certfile=" + p("apiserver-etcd-client.crt"), "--etcd-keyfile=" + p("apiserver-etcd-client.key"),
			"--bind-address=" + node.HostIP, "--advertise-address=" + node.HostIP,
			"--secure-port=" + strconv.Itoa(c.APIServerPort),
			"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
			"--client-ca-file=" + p("ca.crt"),
			"--authorization-mode=Node,RBAC",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p("sa.pub"), "--service-account-signing-key-file=" + p("sa.key"),
			"--service-cluster-ip-range=" + node.ServiceCIDR,
			"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"),
			"--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
			"--kubelet-certificate-authority=" + p("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP",
			// The aggregation layer: the apiserver proxies APIService
			// requests with this client certificate and the user in
			// X-Remote-* headers, which extension servers trust because
			// the certificate is signed by the front-proxy CA.
			"--requestheader-client-ca-file=" + p("front-proxy-ca.crt"),
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file=" + p("front-proxy-client.crt"),
			"--proxy-client-key-file=" + p("front-proxy-client.key"),
			"--enable-aggregator-routing=true",
			"--allow-privileged=true",
			"--profiling=false",
			"--audit-policy-file=" + c.auditPolicy(),
			"--audit-log-path=" + c.AuditLog(), "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
		}},
		ControllerManager: {Name: ControllerManager, Path: c.Bin.ControllerManager, Args: append([]string{
			"--kubeconfig=" + cm, "--authentication-kubeconfig=" + cm, "--authorization-kubeconfig=" + cm,
			"--bind-address=127.0.0.1", "--secure-port=10257",
			"--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + p("sa.key"),
			"--root-ca-file=" + p("ca.crt"),
			"--cluster-signing-cert-file=" + p("ca.crt"), "--cluster-signing-key-file=" + p("ca.key"),
			"--service-cluster-ip-range=" + node.ServiceCIDR,
			"--horizontal-pod-autoscaler-sync-period=" + c.HPASyncPeriod.String(),
			"--controllers=*",
			"--profiling=false",
		}, c.ControllerManagerArgs...)},
		Scheduler: {Name: Scheduler, Path: c.Bin.Scheduler, Args: []string{
			"--kubeconfig=" + sched, "--authentication-kubeconfig=" + sched, "--authorization-kubeconfig=" + sched,
			"--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false", "--profiling=false",
		}},
	}
}

// health is where each component says it is ready.
func (c Config) health(name string) string {
	switch name {
	case Etcd:
		return "https://127.0.0.1:" + strconv.Itoa(c.EtcdPort) + "/health"
	case APIServer:
		return c.ServerURL() + "/readyz"
	case ControllerManager:
		return "https://127.0.0.1:10257/healthz"
	default:
		return "https://127.0.0.1:10259/healthz"
	}
}

// Certs issues every certificate and kubeconfig of the cluster (kept
// across restarts); extra are identities to issue kubeconfigs for (the
// node's).
func Certs(c Config, extra ...Identity) error {
	c.defaults()
	ids := append([]Identity{Admin, ControllerManagerIdentity, SchedulerIdentity}, extra...)
	return c.certs(ids...)
}

// Up starts every component that is not running, each recorded in led,
// and waits until each is healthy. Certs must have run.
func Up(ctx context.Context, c Config, led *ledger.Ledger, progress io.Writer) error {
	c.defaults()
	for name, path := range map[string]string{Etcd: c.Bin.Etcd, APIServer: c.Bin.APIServer, ControllerManager: c.Bin.ControllerManager, Scheduler: c.Bin.Scheduler} {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s binary: %w (scripts/tools.sh ensure kubernetes etcd builds it)", name, err)
		}
	}
	if err := os.WriteFile(c.auditPolicy(), []byte(auditPolicyYAML), 0o600); err != nil {
		return err
	}
	specs := c.specs()
	client, err := c.healthClient(c.CAFile(), filepath.Join(c.pkiDir(), "client-admin.crt"), filepath.Join(c.pkiDir(), "client-admin.key"))
	if err != nil {
		return err
	}
	etcdClient, err := c.healthClient(c.etcdFile("ca.crt"), c.etcdFile("healthcheck-client.crt"), c.etcdFile("healthcheck-client.key"))
	if err != nil {
		return err
	}
	for _, name := range Components {
		start := time.Now()
		if _, running := c.Daemons().Running(name); !running {
			fmt.Fprintf(progress, "==> starting %s\n", name)
			pid, err := c.Daemons().Start(specs[name])
			if err != nil {
				return err
			}
			if err := node.RecordProcess(led, name, pid); err != nil {
				return err
			}
		}
		hc := client
		switch name {
		case ControllerManager, Scheduler:
			hc = selfSigned
		case Etcd:
			hc = etcdClient
		}
		if err := waitHealthy(ctx, hc, c.health(name), 90*time.Second, func() bool {
			_, ok := c.Daemons().Running(name)
			return ok
		}); err != nil {
			return fmt.Errorf("%s: %w (log: %s)", name, err, c.Daemons().LogFile(name))
		}
		fmt.Fprintf(progress, "==> %s healthy (%.1fs)\n", name, time.Since(start).Seconds())
	}
	return nil
}

// Down stops the control plane's processes, newest first.
func Down(c Config) error {
	for i := len(Components) - 1; i >= 0; i-- {
		if err := c.Daemons().Stop(Components[i], 15*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// healthClient trusts caFile and presents a client certificate.
func (c Config) healthClient(caFile, certFile, keyFile string) (*http.Client, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{cert},
	}}}, nil
}

// selfSigned reaches the controller-manager's and scheduler's health ports
// on 127.0.0.1, which serve certificates they generate themselves.
var selfSigned = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

func waitHealthy(ctx context.Context, client *http.Client, url string, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if !alive() {
			return fmt.Errorf("exited during start")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("not healthy within %s at %s: %s", timeout, url, last)
}
