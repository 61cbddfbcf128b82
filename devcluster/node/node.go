// Package node runs the local cluster's node from upstream parts: CNCF
// distribution's registry on 127.0.0.1:5000 holds every image and
// containerd (its mirror for every registry) pulls from it, runc runs the
// pods' containers, the CNI bridge plugin gives each pod an address on the
// cluster's bridge, the kubelet manages them, kube-proxy programs Services
// into iptables and kube-router's firewall enforces NetworkPolicies. This
// package only configures, starts, waits for and stops those programs.
//
// The node shares its machine: a Docker, a system containerd or the
// kubelet of another cluster may run beside it. It takes only what it
// makes, and gives back only that:
//
//   - Each program gets names of its own where upstream allows: containerd
//     its socket, root and state directories; the kubelet its root, pod
//     log directory and cgroup root (CgroupRoot); the CNI plugins their
//     configuration, binaries and IPAM data. All of that lies in the
//     node's directory, so whatever lies there is the node's.
//   - Where upstream writes to a fixed shared directory (SharedDirs), the
//     node removes only its own entries there, known by what names them.
//   - Everything else it changes on the host (the bridge, routes,
//     sysctls, its netfilter chains and rules, its cgroup root, the shared
//     directories it had to create) is written into the cluster's ledger
//     before it is changed; Down gives back exactly what the ledger names.
//     Chains and ipsets the programs create themselves are the node's when
//     their names carry the programs' prefixes and were absent at up (the
//     ledger keeps the names present then).
//
// Before it takes anything, Up names every real conflict (Conflicts): a
// port, a bridge, chains it did not create, a live kubelet on the device
// plugin socket. Foreign files in shared directories and foreign
// processes, whatever their names, are not conflicts: they are left alone.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/take"
)

// Network of the node.
const (
	Bridge      = "psbr0"
	PodCIDR     = "10.88.0.0/16"
	HostIP      = "10.88.0.1" // the bridge's address: the node's InternalIP and where host services listen
	ServiceCIDR = "10.96.0.0/16"
	ClusterDNS  = "10.96.0.10"
	// PauseImage is the sandbox image: built here (images/pause) and
	// pinned, since none can be pulled.
	PauseImage = "registry.k8s.io/pause:3.10.2"
	// LocalRegistry is where containerd sends every pull: an address on
	// this machine, so nothing is fetched from the internet. It serves
	// TLS and lets in only clients with the cluster's registry client
	// certificate.
	LocalRegistry = "127.0.0.1:5000"
	// NodePort is the web server's NodePort (the seed guide's
	// localhost:30080): kube-proxy answers it on 127.0.0.1.
	NodePort = 30080
)

// Names of the node's own, which tell its objects from anyone else's.
const (
	// CgroupRoot is the kubelet's cgroup root: every pod's cgroup lies
	// under it, in every hierarchy (a kubelet of another cluster uses
	// /kubepods).
	CgroupRoot = "/purchase-system-devcluster"
	// CNINetwork names the pods' network. libcni caches each pod's
	// attachment as /var/lib/cni/results/<network>-<container>-<interface>
	// and containerd offers no setting to move it: the name tells the
	// node's entries from others'.
	CNINetwork = "purchase-system-devcluster"
	// ChainPrefix starts the names of the launcher's own netfilter chains.
	ChainPrefix = "DEVCLUSTER-"
)

// Component names, as daemons and in logs.
const (
	Registry   = "registry"
	Containerd = "containerd"
	Kubelet    = "kubelet"
	KubeProxy  = "kube-proxy"
	KubeRouter = "kube-router"
)

// Components in start order; stopped in reverse.
var Components = []string{Registry, Containerd, Kubelet, KubeProxy, KubeRouter}

// Port is an address the node's programs listen on.
type Port struct {
	Component string // the daemon that listens (a name of Components or the control plane's)
	Use       string // which of its ports, when it has several ("peer")
	Addr      string // "" for every address
	Port      int
}

// Ports the node's programs listen on. The NodePort is not bound by any
// process (kube-proxy answers it with DNAT), but a listener there would be
// shadowed, so it must be free too.
var Ports = []Port{
	{Component: Registry, Addr: "127.0.0.1", Port: 5000},
	{Component: Kubelet, Addr: HostIP, Port: 10250},
	{Component: Kubelet, Use: "healthz", Addr: "127.0.0.1", Port: 10248},
	{Component: KubeProxy, Use: "metrics", Addr: "127.0.0.1", Port: 10249},
	{Component: KubeProxy, Use: "healthz", Addr: "127.0.0.1", Port: 10256},
	{Component: KubeProxy, Use: "the NodePort", Addr: "127.0.0.1", Port: NodePort},
	{Component: KubeRouter, Use: "health", Addr: "", Port: 20244},
}

// Binaries are the node's programs, each run by its absolute path: a
// Docker installed from Debian puts an older containerd, shim and runc in
// /usr/bin, and whatever PATH finds first is not what the node was
// configured for.
type Binaries struct {
	Registry      string // CNCF distribution's registry
	ContainerdDir string // containerd, ctr, containerd-shim-runc-v2
	Runc          string
	CNIDir        string // bridge, host-local, loopback, portmap
	Kubelet       string
	KubeProxy     string
	KubeRouter    string
	Crictl        string
}

// Shim is containerd's runc shim, by path.
func (b Binaries) Shim() string { return filepath.Join(b.ContainerdDir, "containerd-shim-runc-v2") }

// RegistryTLS are the files of the local registry's mutual TLS.
type RegistryTLS struct {
	CA         string // signs the registry's serving certificate and its clients'
	Cert, Key  string // the registry's serving certificate
	ClientCert string // the node's (containerd's) and the launcher's client certificate
	ClientKey  string
}

// Config is the node.
type Config struct {
	Name     string
	Dir      string // the node's state (configs, kubelet root, containerd state, logs): removed at Down
	ImageDir string // containerd's root: images and snapshots, kept across Down
	// RegistryDir is the local registry's storage, kept across Down like
	// ImageDir: a warm start pushes only what changed.
	RegistryDir string
	Bin         Binaries
	RegistryTLS RegistryTLS

	CAFile           string // client CA of the kubelet API
	ServingCert      string // kubelet API
	ServingKey       string
	KubeletConfig    string // kubeconfig of system:node:<Name>
	ProxyConfig      string // kubeconfig of system:kube-proxy
	KubeRouterConfig string // kubeconfig of kube-router's identity
}

// Daemons is where the node's processes are tracked.
func (c Config) Daemons() daemon.Dir { return daemon.Dir(c.Dir) }

func (c Config) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

// Socket is containerd's socket: in the node's directory, not at
// /run/containerd/containerd.sock, where a system containerd lives (and
// which dockerd adopts when it finds one).
func (c Config) Socket() string { return c.path("run", "containerd.sock") }

// ContainerdState is containerd's state directory (tasks, bundles, the
// pods' network namespaces and mounts).
func (c Config) ContainerdState() string { return c.path("containerd") }

// PodLogs is the kubelet's pod log directory.
func (c Config) PodLogs() string { return c.path("pod-logs") }

// KubeletRoot is the kubelet's root directory.
func (c Config) KubeletRoot() string { return c.path("kubelet") }

// maxSocketPath: a unix socket's path must fit sun_path (108 bytes with
// its NUL); containerd adds ".ttrpc" to its socket's.
const maxSocketPath = 100

// CheckHost fails early, saying what to do, when this machine cannot run
// the node.
func CheckHost(c Config) error {
	if os.Geteuid() != 0 {
		return errors.New("the node needs root: containerd, runc and the kubelet manage namespaces, cgroups and iptables")
	}
	for _, p := range []string{"ip", "iptables", "iptables-save", "ipset", "mount"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("the node needs %s on PATH (apt-get install iproute2 iptables ipset)", p)
		}
	}
	b := c.Bin
	for name, p := range map[string]string{
		"containerd": filepath.Join(b.ContainerdDir, "containerd"), "containerd-shim-runc-v2": b.Shim(), "runc": b.Runc,
		"CNI bridge": filepath.Join(b.CNIDir, "bridge"), "kubelet": b.Kubelet,
		"kube-proxy": b.KubeProxy, "kube-router": b.KubeRouter, "crictl": b.Crictl, "registry": b.Registry,
	} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%s binary %q: give an absolute path (the node never runs what PATH finds)", name, p)
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s binary: %w (scripts/tools.sh ensure node kubernetes builds it)", name, err)
		}
	}
	if n := len(c.Socket()) + len(".ttrpc"); n > maxSocketPath {
		return fmt.Errorf("containerd's socket %s.ttrpc is %d bytes long, over the %d a unix socket allows: use a checkout with a shorter path", c.Socket(), n, maxSocketPath)
	}
	return nil
}

// Up writes the node's configuration, takes from the host what the node
// needs (recording each thing in led first), starts whatever is not
// running and waits for each program to answer. It does not wait for the
// Node object: the caller does, with its API client.
func Up(ctx context.Context, c Config, led *ledger.Ledger, progress io.Writer) error {
	if err := CheckHost(c); err != nil {
		return err
	}
	if err := SetUpHost(c, led); err != nil {
		return fmt.Errorf("setting up the host: %w", err)
	}
	if err := c.writeConfigs(); err != nil {
		return err
	}
	specs := c.specs()
	for _, name := range Components {
		if _, running := c.Daemons().Running(name); running {
			continue
		}
		if name == Containerd {
			// Bundles of an earlier run (a node that was killed) name
			// their shims' sockets in the shared socket directory; once
			// containerd starts it removes those bundles, and with them
			// what tells the sockets apart from others'.
			if err := take.RecordShimSockets(led, c.ContainerdState()); err != nil {
				return err
			}
		}
		if name == Kubelet {
			// The kubelet checks these itself (protectKernelDefaults)
			// and fails rather than change them: the launcher sets them,
			// recorded, and Down puts the old values back.
			if err := takeKernelDefaults(led); err != nil {
				return err
			}
		}
		start := time.Now()
		fmt.Fprintf(progress, "==> starting %s\n", name)
		pid, err := c.Daemons().Start(specs[name])
		if err != nil {
			return err
		}
		if err := recordProcess(led, name, pid); err != nil {
			return err
		}
		if err := c.waitStarted(ctx, name, 60*time.Second); err != nil {
			return fmt.Errorf("%s: %w (log: %s)", name, err, c.Daemons().LogFile(name))
		}
		fmt.Fprintf(progress, "==> %s up (%.1fs)\n", name, time.Since(start).Seconds())
	}
	return nil
}

// recordProcess writes a started daemon into the ledger with its start
// time.
func recordProcess(led *ledger.Ledger, name string, pid int) error {
	start, err := daemon.StartTime(pid)
	if err != nil {
		return fmt.Errorf("%s exited at once: %w", name, err)
	}
	return led.Record(ledger.Entry{Kind: ledger.Process, Name: name, PID: pid, Start: start})
}

// RecordProcess is recordProcess for the control plane's daemons.
func RecordProcess(led *ledger.Ledger, name string, pid int) error {
	return recordProcess(led, name, pid)
}

// waitStarted waits until the component answers where it should.
func (c Config) waitStarted(ctx context.Context, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if _, ok := c.Daemons().Running(name); !ok {
			return errors.New("exited during start")
		}
		switch name {
		case Registry:
			last = c.registryOK(ctx)
		case Containerd:
			last = c.ctr(ctx, nil, "version")
		case Kubelet:
			last = httpOK(ctx, localClient, "http://127.0.0.1:10248/healthz")
		case KubeProxy:
			last = httpOK(ctx, localClient, "http://127.0.0.1:10256/healthz")
		case KubeRouter:
			last = httpOK(ctx, localClient, "http://127.0.0.1:20244/healthz")
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("not up within %s: %v", timeout, last)
}

func (c Config) ctr(ctx context.Context, out io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin.ContainerdDir, "ctr"), append([]string{"--address", c.Socket()}, args...)...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (c Config) crictl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bin.Crictl, append([]string{"--runtime-endpoint", "unix://" + c.Socket(), "--timeout", "60s"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Down stops the pods (their containers get grace to exit) and the node's
// programs, then gives back what the node took: what lies under its
// directories, cgroup root and bridge, its entries in the shared
// directories, the chains and sets its programs made, and every entry of
// the ledger that is the node's. It goes on past errors and reports them
// all: a half-removed node must not stop the rest.
func Down(c Config, led *ledger.Ledger, grace time.Duration, progress io.Writer) error {
	var errs []error
	ctx := context.Background()
	// The kubelet would restart what is stopped under it: it goes first.
	errs = append(errs, c.Daemons().Stop(Kubelet, 30*time.Second))
	// A sandbox torn down through CNI leaves no cache entry; one of a node
	// that was killed does: its id, from containerd's state, names it.
	sandboxes := c.sandboxes()
	if _, ok := c.Daemons().Running(Containerd); ok {
		fmt.Fprintf(progress, "==> stopping the pods (up to %s each)\n", grace)
		errs = append(errs, c.stopPods(ctx, grace))
	}
	// The shims' sockets are named in the bundles containerd keeps in its
	// state: read them while it is still there.
	sockets := c.shimSockets()
	errs = append(errs, c.Daemons().Stop(KubeRouter, 10*time.Second))
	errs = append(errs, c.Daemons().Stop(KubeProxy, 10*time.Second))
	errs = append(errs, c.Daemons().Stop(Containerd, 15*time.Second))
	errs = append(errs, c.Daemons().Stop(Registry, 10*time.Second))
	// With every pod removed the shims have exited, unless the node was
	// killed: then its shims (known by the containerd address they
	// serve) and what runs in its cgroup root go now.
	sockets = append(sockets, killShims(c.Socket())...)
	errs = append(errs, killCgroupRoot())
	errs = append(errs, take.UnmountUnder(c.Dir, c.ImageDir))
	errs = append(errs, c.removeSharedEntries(sockets, sandboxes))
	errs = append(errs, removeProgramsNetfilter(led))
	return errors.Join(errs...)
}

// stopPods stops every container with grace, all at once, then removes
// the sandboxes (which tears down their networks through CNI).
func (c Config) stopPods(ctx context.Context, grace time.Duration) error {
	out, err := c.crictl(ctx, "ps", "-q")
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, id := range strings.Fields(out) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.crictl(ctx, "stop", "--timeout", strconv.Itoa(int(grace.Seconds())), id); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if _, err := c.crictl(ctx, "rmp", "--all", "--force"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// NodeIP is the node's address as a net.IP.
func NodeIP() net.IP { return net.ParseIP(HostIP) }
