// Package node runs the local cluster's node from upstream parts: CNCF
// distribution's registry on 127.0.0.1:5000 holds every image and
// containerd (its mirror for every registry) pulls from it, runc runs the
// pods' containers, the CNI bridge plugin
// gives each pod an address on the cluster's bridge, the kubelet manages
// them, kube-proxy programs Services into iptables and kube-router's
// firewall enforces NetworkPolicies. This package only configures, starts,
// waits for and stops those programs, and undoes what they did to the host.
//
// Host state the node changes, and where it is undone (Down):
//
//	bridge psbr0 (10.88.0.1/16)        deleted
//	sysctls (ip_forward, route_localnet, bridge-nf-call-iptables)
//	                                   restored from sysctls.json
//	iptables chains KUBE-*, CNI-*      kube-proxy --cleanup, kube-router --cleanup-config, then any left
//	ipsets of kube-router              kube-router --cleanup-config
//	cgroups /kubepods in each hierarchy removed, deepest first
//	network namespaces /run/netns/cni-* unmounted and removed
//	/run/containerd, /var/lib/cni, /var/log/containers, /var/lib/kubelet
//	                                   removed (containerd and the kubelet write there whatever they are told)
//	/run/nri                           never created (containerd's NRI is disabled); removed if an older run left it
//
// containerd's content store and snapshots live in ImageDir, outside the
// cluster's state, so a warm start does not unpack every image again.
package node

import (
	"context"
	"encoding/json"
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
	// Socket is containerd's: at the path cAdvisor probes for containerd,
	// so the kubelet's container stats carry the pods' labels.
	Socket = "/run/containerd/containerd.sock"
	// LocalRegistry is where containerd sends every pull: an address on
	// this machine, so nothing is fetched from the internet.
	LocalRegistry = "127.0.0.1:5000"
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

// Binaries are the node's programs.
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

// Config is the node.
type Config struct {
	Name     string
	Dir      string // the node's state (configs, kubelet root, logs): removed at Down
	ImageDir string // containerd's root: images and snapshots, kept across Down
	// RegistryDir is the local registry's storage, kept across Down like
	// ImageDir: a warm start pushes only what changed.
	RegistryDir string
	Bin         Binaries

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

// CheckHost fails early, saying what to do, when this machine cannot run
// the node.
func CheckHost(b Binaries) error {
	if os.Geteuid() != 0 {
		return errors.New("the node needs root: containerd, runc and the kubelet manage namespaces, cgroups and iptables")
	}
	for _, p := range []string{"ip", "iptables", "ipset", "mount"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("the node needs %s on PATH (apt-get install iproute2 iptables ipset)", p)
		}
	}
	for name, p := range map[string]string{
		"containerd": filepath.Join(b.ContainerdDir, "containerd"), "runc": b.Runc,
		"CNI bridge": filepath.Join(b.CNIDir, "bridge"), "kubelet": b.Kubelet,
		"kube-proxy": b.KubeProxy, "kube-router": b.KubeRouter, "crictl": b.Crictl, "registry": b.Registry,
	} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s binary: %w (scripts/tools.sh ensure node kubernetes builds it)", name, err)
		}
	}
	return nil
}

// SetUpHost creates the bridge (the API server binds to its address, so it
// must exist before the control plane starts) and sets the sysctls the
// node needs, saving their old values for Down. It is idempotent.
func SetUpHost(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !strings.Contains(ipOut("link", "show", Bridge), Bridge) {
		if err := ip("link", "add", Bridge, "type", "bridge"); err != nil {
			return err
		}
	}
	if !strings.Contains(ipOut("addr", "show", "dev", Bridge), HostIP+"/16") {
		if err := ip("addr", "add", HostIP+"/16", "dev", Bridge); err != nil {
			return err
		}
	}
	if err := ip("link", "set", Bridge, "up"); err != nil {
		return err
	}
	// Cluster IPs are routed to the bridge: kube-proxy's DNAT rewrites
	// them on the way, and a packet to an unassigned one stays on the
	// bridge instead of following the host's default route off the machine.
	if !strings.Contains(ipOut("route", "show", ServiceCIDR), ServiceCIDR) {
		if err := ip("route", "add", ServiceCIDR, "dev", Bridge); err != nil {
			return err
		}
	}
	return setSysctls(filepath.Join(dir, "sysctls.json"), map[string]string{
		// Pod → Service → pod on the same bridge is routed through the host.
		"net/ipv4/ip_forward": "1",
		// Bridged pod-to-pod traffic passes iptables: NetworkPolicies and
		// Services between pods of one bridge need it.
		"net/bridge/bridge-nf-call-iptables": "1",
		// kube-proxy serves NodePorts on 127.0.0.1 (the seed's localhost:30080).
		"net/ipv4/conf/all/route_localnet": "1",
	})
}

// setSysctls writes each value, recording in file the value it had before
// the first change (a second Up keeps the first record).
func setSysctls(file string, want map[string]string) error {
	saved := map[string]string{}
	if b, err := os.ReadFile(file); err == nil {
		_ = json.Unmarshal(b, &saved)
	}
	for k, v := range want {
		p := filepath.Join("/proc/sys", k)
		old, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", strings.ReplaceAll(k, "/", "."), err)
		}
		if _, ok := saved[k]; !ok {
			saved[k] = strings.TrimSpace(string(old))
		}
		b, _ := json.Marshal(saved)
		if err := os.WriteFile(file, b, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(k, "/", "."), v, err)
		}
	}
	return nil
}

func restoreSysctls(file string) error {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	saved := map[string]string{}
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	var errs []error
	for k, v := range saved {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring sysctl %s=%s: %w", k, v, err))
		}
	}
	if len(errs) == 0 {
		return os.Remove(file)
	}
	return errors.Join(errs...)
}

// Up writes the node's configuration, starts whatever is not running and
// waits for each program to answer. It does not wait for the Node object:
// the caller does, with its API client.
func Up(ctx context.Context, c Config, progress io.Writer) error {
	if err := CheckHost(c.Bin); err != nil {
		return err
	}
	if err := SetUpHost(c.Dir); err != nil {
		return fmt.Errorf("setting up the host network: %w", err)
	}
	if err := c.writeConfigs(); err != nil {
		return err
	}
	specs := c.specs()
	for _, name := range Components {
		if _, running := c.Daemons().Running(name); running {
			continue
		}
		start := time.Now()
		fmt.Fprintf(progress, "==> starting %s\n", name)
		if _, err := c.Daemons().Start(specs[name]); err != nil {
			return err
		}
		if err := c.waitStarted(ctx, name, 60*time.Second); err != nil {
			return fmt.Errorf("%s: %w (log: %s)", name, err, c.Daemons().LogFile(name))
		}
		fmt.Fprintf(progress, "==> %s up (%.1fs)\n", name, time.Since(start).Seconds())
	}
	return nil
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
			last = httpOK(ctx, "http://"+LocalRegistry+"/v2/")
		case Containerd:
			last = c.ctr(ctx, nil, "version")
		case Kubelet:
			last = httpOK(ctx, "http://127.0.0.1:10248/healthz")
		case KubeProxy:
			last = httpOK(ctx, "http://127.0.0.1:10256/healthz")
		case KubeRouter:
			last = httpOK(ctx, "http://127.0.0.1:20244/healthz")
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
	cmd := exec.CommandContext(ctx, filepath.Join(c.Bin.ContainerdDir, "ctr"), append([]string{"--address", Socket}, args...)...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (c Config) crictl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bin.Crictl, append([]string{"--runtime-endpoint", "unix://" + Socket, "--timeout", "60s"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Down stops the pods (their containers get grace to exit), the node's
// programs, and undoes what they did to the host. It goes on past errors
// and reports them all: a half-removed node must not stop the rest.
func Down(c Config, grace time.Duration, progress io.Writer) error {
	var errs []error
	ctx := context.Background()
	// The kubelet would restart what is stopped under it: it goes first.
	errs = append(errs, c.Daemons().Stop(Kubelet, 30*time.Second))
	if _, ok := c.Daemons().Running(Containerd); ok {
		fmt.Fprintf(progress, "==> stopping the pods (up to %s each)\n", grace)
		errs = append(errs, c.stopPods(ctx, grace))
	}
	errs = append(errs, c.Daemons().Stop(KubeRouter, 10*time.Second))
	errs = append(errs, c.Daemons().Stop(KubeProxy, 10*time.Second))
	errs = append(errs, c.Daemons().Stop(Containerd, 15*time.Second))
	errs = append(errs, c.Daemons().Stop(Registry, 10*time.Second))
	// Shims outlive containerd by design (they are in a process group of
	// their own); with every pod removed they have exited, unless the node
	// was killed: then they and their containers go now.
	killShims()
	errs = append(errs, c.cleanupNetfilter())
	errs = append(errs, unmountUnder("/run/containerd", c.Dir, c.ImageDir, "/run/netns"))
	errs = append(errs, removeNetns())
	errs = append(errs, removeCgroups())
	if strings.Contains(ipOut("route", "show", ServiceCIDR), ServiceCIDR) {
		errs = append(errs, ip("route", "del", ServiceCIDR, "dev", Bridge))
	}
	errs = append(errs, removeVeths())
	if strings.Contains(ipOut("link", "show", Bridge), Bridge) {
		errs = append(errs, ip("link", "del", Bridge))
	}
	errs = append(errs, restoreSysctls(filepath.Join(c.Dir, "sysctls.json")))
	for _, p := range HostPaths {
		errs = append(errs, os.RemoveAll(p))
	}
	return errors.Join(errs...)
}

// HostPaths are the paths outside the configured directories that
// containerd, the CNI plugins and the kubelet write to whatever they are
// told (one node per machine, so they are the node's alone).
var HostPaths = []string{"/run/containerd", "/run/nri", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/run/mount", "/etc/cni/net.d"}

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

func killShims() {
	// The shim's group holds the containers it started.
	for _, pid := range processesNamed("containerd-shim-runc-v2") {
		_ = killGroup(pid)
	}
}

// cleanupNetfilter removes the rules and sets of kube-proxy and kube-router
// with their own cleanup modes, then whatever chain is still theirs or the
// CNI plugins'.
func (c Config) cleanupNetfilter() error {
	var errs []error
	if out, err := exec.Command(c.Bin.KubeProxy, "--cleanup", "--v=0").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("kube-proxy --cleanup: %v: %s", err, lastLines(out, 5)))
	}
	// Not kube-router --cleanup-config: it also deletes every IPVS service
	// on the host ("we assume that we own all of them"), and v2.1.0 then
	// crashes in its service proxy's cleanup. Its firewall's state is
	// chains and ipsets named KUBE-*, removed here.
	errs = append(errs, removeChains())
	errs = append(errs, removeIPSets())
	return errors.Join(errs...)
}

// removeIPSets destroys kube-router's sets (KUBE-SRC-*, KUBE-DST-*), once
// no rule refers to them.
func removeIPSets() error {
	out, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		return nil // no ipset: nothing was created
	}
	var errs []error
	for _, s := range strings.Fields(string(out)) {
		if strings.HasPrefix(s, "KUBE-") {
			if b, err := exec.Command("ipset", "destroy", s).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ipset destroy %s: %s", s, strings.TrimSpace(string(b))))
			}
		}
	}
	return errors.Join(errs...)
}

// ChainPrefixes are the netfilter chains the node's programs create.
var ChainPrefixes = []string{"KUBE-", "CNI-", "KUBE-ROUTER-"}

// removeChains flushes and deletes every chain of ours still in any table,
// after removing the rules that jump to them from the built-in chains.
func removeChains() error {
	var errs []error
	for _, table := range []string{"filter", "nat", "mangle", "raw"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue
		}
		var ours []string
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case strings.HasPrefix(line, ":") && ourChain(strings.Fields(line[1:])[0]):
				ours = append(ours, strings.Fields(line[1:])[0])
			case strings.HasPrefix(line, "-A ") && jumpsToOurs(line):
				f := splitRule(line)
				if !ourChain(f[1]) {
					args := append([]string{"-t", table, "-D"}, f[1:]...)
					if b, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
						errs = append(errs, fmt.Errorf("iptables %s: %s", strings.Join(args, " "), b))
					}
				}
			}
		}
		for _, ch := range ours {
			_ = exec.Command("iptables", "-t", table, "-F", ch).Run()
		}
		for _, ch := range ours {
			if b, err := exec.Command("iptables", "-t", table, "-X", ch).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("iptables -t %s -X %s: %s", table, ch, b))
			}
		}
	}
	return errors.Join(errs...)
}

func ourChain(name string) bool {
	for _, p := range ChainPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// splitRule splits an iptables-save line into arguments, keeping quoted
// comments ("kube-router netpol - X") whole.
func splitRule(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			inQuote, have = !inQuote, true
		case ch == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

func jumpsToOurs(rule string) bool {
	f := splitRule(rule)
	for i := range f {
		if (f[i] == "-j" || f[i] == "-g") && i+1 < len(f) && ourChain(f[i+1]) {
			return true
		}
	}
	return false
}

// Leftovers lists what of the node is still on the host: processes, mounts,
// cgroups, network namespaces, netfilter chains, the bridge, host paths
// and changed sysctls. Empty after Down.
func Leftovers(dir string) []string {
	var out []string
	for _, name := range []string{"registry", "containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "kube-router", "runc", "pause"} {
		for _, pid := range processesNamed(name) {
			out = append(out, fmt.Sprintf("process %s (pid %d)", name, pid))
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 && (strings.HasPrefix(f[4], "/run/containerd") || strings.HasPrefix(f[4], "/run/netns/cni-") ||
				strings.HasPrefix(f[4], "/var/lib/kubelet") || (dir != "" && strings.HasPrefix(f[4], dir))) {
				out = append(out, "mount "+f[4])
			}
		}
	}
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, "kubepods")); err == nil {
			out = append(out, "cgroup "+filepath.Join(h, "kubepods"))
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "cni-") {
				out = append(out, "netns "+e.Name())
			}
		}
	}
	for _, table := range []string{"filter", "nat", "mangle", "raw"} {
		b, _ := exec.Command("iptables-save", "-t", table).Output()
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, ":") && ourChain(strings.Fields(line[1:])[0]) {
				out = append(out, "iptables chain "+table+"/"+strings.Fields(line[1:])[0])
			}
		}
	}
	if b, err := exec.Command("ipset", "list", "-n").Output(); err == nil {
		for _, s := range strings.Fields(string(b)) {
			if strings.HasPrefix(s, "KUBE-") {
				out = append(out, "ipset "+s)
			}
		}
	}
	if strings.Contains(ipOut("link", "show", Bridge), Bridge) {
		out = append(out, "bridge "+Bridge)
	}
	for _, v := range vethsOnBridge() {
		out = append(out, "veth "+v)
	}
	for _, p := range HostPaths {
		if _, err := os.Stat(p); err == nil {
			out = append(out, "path "+p)
		}
	}
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "sysctls.json")); err == nil {
			out = append(out, "sysctls not restored: "+filepath.Join(dir, "sysctls.json"))
		}
	}
	return out
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// NodeIP is the node's address as a net.IP.
func NodeIP() net.IP { return net.ParseIP(HostIP) }
