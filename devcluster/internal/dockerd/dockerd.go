// Package dockerd runs a Docker daemon of the checkout's own, for what
// needs Docker (the kind path; the test that the local cluster lives
// beside Docker), when no dockerd runs on the machine. A dockerd that
// already runs is used as it is and never touched.
//
// The daemon of its own is Debian's docker.io: dockerd with a containerd
// started beside it on a socket of its own (dockerd would otherwise adopt
// a system containerd's /run/containerd/containerd.sock). Its data root
// is in the checkout's state (images stay across runs); its sockets in a
// short directory under /run; its API socket is root's only. Docker
// changes the host when it starts (ip_forward, FORWARD's policy, its
// chains and rules, docker0 and the bridges of its networks): all of it is
// recorded in a ledger, as the local cluster's changes are, and given
// back when this daemon stops.
package dockerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/netfilter"
	"github.com/purchase-system/purchase-system/devcluster/internal/take"
)

// Config is the daemon of the checkout's own.
type Config struct {
	StateDir   string // data root, containerd's root, logs, pid files, the ledger
	RunDir     string // sockets and runtime state: short, under /run
	Dockerd    string // Debian's dockerd
	Containerd string // Debian's containerd
	// Bounded, when set, is runc-bounded: on a machine whose capability
	// bounding set lacks capabilities Docker gives privileged containers
	// (checked at start), dockerd runs every container through it, with
	// Runc underneath.
	Bounded string
	Runc    string
}

// LacksCapabilities reports whether this machine's capability bounding
// set lacks any capability the kernel knows: Docker 20.10 gives a
// privileged container all of them, and runc then fails with "unable to
// apply caps".
func LacksCapabilities() (bool, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return false, err
	}
	var last uint
	if _, err := fmt.Sscan(string(b), &last); err != nil {
		return false, err
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			var mask uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &mask); err != nil {
				return false, err
			}
			all := uint64(1)<<(last+1) - 1
			return mask&all != all, nil
		}
	}
	return false, errors.New("no CapBnd in /proc/self/status")
}

// Host is the DOCKER_HOST of the daemon of the checkout's own.
func (c Config) Host() string { return "unix://" + c.socket() }

func (c Config) socket() string           { return filepath.Join(c.RunDir, "docker.sock") }
func (c Config) containerdSocket() string { return filepath.Join(c.RunDir, "containerd.sock") }
func (c Config) ledgerPath() string       { return filepath.Join(c.StateDir, "host-ledger.jsonl") }
func (c Config) daemons() daemon.Dir      { return daemon.Dir(c.StateDir) }

const (
	dockerdName    = "dockerd"
	containerdName = "containerd"
	// CgroupParent is where the daemon's containers' cgroups go.
	CgroupParent = "/purchase-system-docker"
)

// Foreign is the pid of a dockerd running on this machine that is not the
// checkout's own (0 if none).
func Foreign(c Config) int {
	own, _ := c.daemons().Running(dockerdName)
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range exes {
		exe, err := os.Readlink(p)
		if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "dockerd" {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/exe", &pid); err == nil && pid != own {
			return pid
		}
	}
	return 0
}

// Running reports whether the checkout's own dockerd runs.
func Running(c Config) bool {
	_, ok := c.daemons().Running(dockerdName)
	return ok
}

// hostSysctls are the settings Docker changes at its start.
var hostSysctls = []string{"net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding"}

// sharedPaths are what Docker's containerd and its shims write outside
// the directories they are given (containerd#10502), dockerd's identity
// key and its plugin directory.
var sharedPaths = []struct {
	path string
	dir  bool
}{
	{"/run/containerd", true}, {"/run/containerd/s", true}, {"/run/containerd/runc", true},
	{"/etc/docker", true}, {"/etc/docker/key.json", false},
	// Plugin sockets, whatever the exec root.
	{"/run/docker", true}, {"/run/docker/plugins", true},
}

// Up starts the checkout's own containerd and dockerd, unless they run,
// recording first what the host holds that Docker changes, and waits for
// the Docker API.
func Up(ctx context.Context, c Config, out io.Writer) error {
	if Running(c) {
		return nil
	}
	if pid := Foreign(c); pid != 0 {
		return fmt.Errorf("a dockerd (pid %d) already runs on this machine: use it, not a second one", pid)
	}
	for _, b := range []string{c.Dockerd, c.Containerd} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%w (apt-get install docker.io)", err)
		}
	}
	if n := len(c.containerdSocket()) + len(".ttrpc"); n > 100 {
		return fmt.Errorf("run directory %s is too long for a unix socket", c.RunDir)
	}
	led, err := ledger.Open(c.ledgerPath())
	if err != nil {
		return err
	}
	if err := ledger.PrivateDir(c.StateDir); err != nil {
		return err
	}
	if err := recordBefore(led); err != nil {
		return err
	}
	if err := take.IfAbsent(led, c.RunDir, true); err != nil {
		return err
	}
	if err := ledger.PrivateDir(c.RunDir); err != nil {
		return err
	}
	for _, p := range sharedPaths {
		if err := take.IfAbsent(led, p.path, p.dir); err != nil {
			return err
		}
	}
	for _, h := range take.Hierarchies() {
		dir := filepath.Join(h, CgroupParent)
		if _, err := os.Stat(dir); err == nil {
			continue
		}
		if _, done := led.Find(ledger.Cgroup, dir); !done {
			if err := led.Record(ledger.Entry{Kind: ledger.Cgroup, Name: dir}); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(c.StateDir, "containerd.toml"), []byte(c.containerdConfig()), 0o600); err != nil {
		return err
	}
	// A daemon of an earlier run that was killed left its shims' sockets
	// in the shared socket directory; its bundles name them until this
	// containerd starts and removes them.
	if err := take.RecordShimSockets(led, c.containerdState()); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> starting Docker's containerd (%s) on %s\n", c.Containerd, c.containerdSocket())
	if err := c.start(led, daemon.Spec{Name: containerdName, Path: c.Containerd, Args: []string{"--config", filepath.Join(c.StateDir, "containerd.toml")}}); err != nil {
		return err
	}
	if err := waitFor(ctx, 30*time.Second, func() error { return dialUnix(c.containerdSocket()) }); err != nil {
		return fmt.Errorf("the containerd of Docker: %w (log: %s)", err, c.daemons().LogFile(containerdName))
	}
	args := []string{
		"--host=" + c.Host(),
		// The API socket is root's: membership of a docker group would be
		// root on this machine for every account in it.
		"--group=root",
		"--data-root=" + filepath.Join(c.StateDir, "data"),
		"--exec-root=" + filepath.Join(c.RunDir, "exec"),
		"--pidfile=" + filepath.Join(c.RunDir, "dockerd.pid"),
		"--containerd=" + c.containerdSocket(),
		"--config-file=" + filepath.Join(c.StateDir, "daemon.json"),
		// Containers' cgroups under a parent of this daemon's own (not
		// /docker, another Docker's), removed when it stops.
		"--cgroup-parent=" + CgroupParent,
	}
	daemonJSON := "{}\n"
	lacks, err := LacksCapabilities()
	if err != nil {
		return err
	}
	if lacks {
		if c.Bounded == "" || c.Runc == "" {
			return errors.New("this machine's capability bounding set lacks capabilities Docker gives privileged containers: runc-bounded and runc are needed (make build)")
		}
		fmt.Fprintf(out, "==> this machine's capability bounding set lacks capabilities Docker gives privileged containers: containers run through %s\n", c.Bounded)
		daemonJSON = fmt.Sprintf("{\"runtimes\": {\"runc-bounded\": {\"path\": %q, \"runtimeArgs\": [%q]}}, \"default-runtime\": \"runc-bounded\"}\n", c.Bounded, "--runc="+c.Runc)
	}
	if err := os.WriteFile(filepath.Join(c.StateDir, "daemon.json"), []byte(daemonJSON), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> starting dockerd (%s), DOCKER_HOST=%s\n", c.Dockerd, c.Host())
	if err := c.start(led, daemon.Spec{Name: dockerdName, Path: c.Dockerd, Args: args}); err != nil {
		return err
	}
	if err := waitFor(ctx, 60*time.Second, func() error { return ping(ctx, c.socket()) }); err != nil {
		return fmt.Errorf("dockerd: %w (log: %s)", err, c.daemons().LogFile(dockerdName))
	}
	return recordAfter(led)
}

func (c Config) start(led *ledger.Ledger, spec daemon.Spec) error {
	pid, err := c.daemons().Start(spec)
	if err != nil {
		return err
	}
	start, err := daemon.StartTime(pid)
	if err != nil {
		return fmt.Errorf("%s exited at once (log: %s)", spec.Name, c.daemons().LogFile(spec.Name))
	}
	return led.Record(ledger.Entry{Kind: ledger.Process, Name: spec.Name, PID: pid, Start: start})
}

// containerdConfig: Debian's containerd 1.6 for dockerd only: its own
// root, state and socket; no CRI (nothing here is a kubelet's), no
// drop-ins.
func (c Config) containerdConfig() string {
	return fmt.Sprintf(`# Written by the checkout's Docker launcher (devcluster/internal/dockerd).
version = 2
root = %q
state = %q
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = %q
`, filepath.Join(c.StateDir, "containerd"), c.containerdState(), c.containerdSocket())
}

// containerdState is the state directory of Docker's containerd: the
// shims' bundles.
func (c Config) containerdState() string { return filepath.Join(c.RunDir, "containerd") }

// Names of the ledger's notes of what the host held before Docker ran.
const (
	beforeLinks   = "links"
	beforeSysctls = "sysctls"
)

func beforeRules(family, table string) string    { return family + "/" + table + " rules" }
func beforePolicies(family, table string) string { return family + "/" + table + " policies" }

// recordBefore writes down, once, what Docker will change: chains, rules
// and policies, links, sysctls.
func recordBefore(led *ledger.Ledger) error {
	if _, done := led.Find(ledger.Existing, beforeLinks); done {
		return nil
	}
	if err := netfilter.RecordExisting(led); err != nil {
		return err
	}
	for _, f := range netfilter.Families {
		for _, t := range netfilter.Tables {
			d, ok := netfilter.Dump(f, t)
			if !ok {
				continue
			}
			var rules, policies []string
			for _, r := range d.Rules {
				rules = append(rules, strings.Join(r, " "))
			}
			for ch, p := range d.Policies {
				policies = append(policies, ch+"="+p)
			}
			if err := led.Record(ledger.Entry{Kind: ledger.Existing, Name: beforeRules(f, t), Args: rules}); err != nil {
				return err
			}
			if err := led.Record(ledger.Entry{Kind: ledger.Existing, Name: beforePolicies(f, t), Args: policies}); err != nil {
				return err
			}
		}
	}
	var sysctls []string
	for _, k := range hostSysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			sysctls = append(sysctls, k+"="+strings.TrimSpace(string(b)))
		}
	}
	if err := led.Record(ledger.Entry{Kind: ledger.Existing, Name: beforeSysctls, Args: sysctls}); err != nil {
		return err
	}
	return led.Record(ledger.Entry{Kind: ledger.Existing, Name: beforeLinks, Args: links()})
}

// recordAfter writes down what Docker changed at its start: sysctls and
// policies with their old and new values, the links it made (docker0).
func recordAfter(led *ledger.Ledger) error {
	before, _ := led.Find(ledger.Existing, beforeSysctls)
	for _, kv := range before.Args {
		k, old, _ := strings.Cut(kv, "=")
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			continue
		}
		if now := strings.TrimSpace(string(b)); now != old {
			if _, done := led.Find(ledger.Sysctl, k); !done {
				if err := led.Record(ledger.Entry{Kind: ledger.Sysctl, Name: k, Old: old, New: now}); err != nil {
					return err
				}
			}
		}
	}
	for _, f := range netfilter.Families {
		for _, t := range netfilter.Tables {
			d, ok := netfilter.Dump(f, t)
			prev, recorded := led.Find(ledger.Existing, beforePolicies(f, t))
			if !ok || !recorded {
				continue
			}
			for _, kv := range prev.Args {
				ch, old, _ := strings.Cut(kv, "=")
				if now := d.Policies[ch]; now != "" && now != old {
					where := f + "/" + t + "/" + ch
					if _, done := led.Find(ledger.Policy, where); !done {
						if err := led.Record(ledger.Entry{Kind: ledger.Policy, Name: where, Old: old, New: now}); err != nil {
							return err
						}
					}
				}
			}
		}
	}
	return recordNewLinks(led)
}

// recordNewLinks records the links that were absent before Docker ran
// and that Docker made: docker0 and its networks' bridges (br-<id>).
func recordNewLinks(led *ledger.Ledger) error {
	before, _ := led.Find(ledger.Existing, beforeLinks)
	for _, l := range links() {
		if slices.Contains(before.Args, l) || !(l == "docker0" || strings.HasPrefix(l, "br-")) {
			continue
		}
		if _, done := led.Find(ledger.Link, l); done {
			continue
		}
		if err := led.Record(ledger.Entry{Kind: ledger.Link, Name: l}); err != nil {
			return err
		}
	}
	return nil
}

func links() []string {
	ents, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Down stops the checkout's own dockerd (its containers stop with it) and
// containerd, and gives back what Docker took. With no ledger there is
// nothing of its own to stop: nothing changes.
func Down(c Config, out io.Writer) error {
	led, err := ledger.Load(c.ledgerPath())
	if errors.Is(err, ledger.ErrNone) {
		fmt.Fprintf(out, "==> no dockerd of this checkout's: nothing to stop\n")
		return nil
	}
	if err != nil {
		return err
	}
	// The bridges of networks made since the start (kind's) are Docker's
	// too; record them while they are there.
	errs := []error{recordNewLinks(led)}
	// The shims' sockets in the shared socket directory are named in the
	// bundles in the run directory, which goes below: a shim that was
	// killed leaves its socket, and GiveBack removes it.
	errs = append(errs, take.RecordShimSockets(led, c.containerdState()))
	fmt.Fprintf(out, "==> stopping the checkout's dockerd and its containers\n")
	errs = append(errs, c.daemons().Stop(dockerdName, 90*time.Second))
	errs = append(errs, c.daemons().Stop(containerdName, 15*time.Second))
	for _, pid := range take.ShimsServing(c.containerdSocket()) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	errs = append(errs, take.UnmountUnder(c.StateDir, c.RunDir))
	// The run directory is the daemon's alone (the ledger says it was
	// created here): what Docker left in it goes, once nothing is
	// mounted there.
	if _, ours := led.Find(ledger.Dir, c.RunDir); ours {
		if m := take.MountsUnder(c.RunDir); len(m) > 0 {
			errs = append(errs, fmt.Errorf("still mounted under %s: %s", c.RunDir, strings.Join(m, ", ")))
		} else {
			errs = append(errs, os.RemoveAll(c.RunDir))
		}
	}
	errs = append(errs, removeDockerNetfilter(led))
	errs = append(errs, take.GiveBack(led, out))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w (what could not be given back stays in %s)", err, c.ledgerPath())
	}
	fmt.Fprintf(out, "==> the checkout's dockerd stopped; the host is as before it started\n")
	return nil
}

// removeDockerNetfilter removes the chains Docker made (DOCKER*) and the
// rules it added elsewhere: those absent before it ran that name one of
// its links or chains.
func removeDockerNetfilter(led *ledger.Ledger) error {
	var own []string
	for _, e := range led.Entries() {
		if e.Kind == ledger.Link {
			own = append(own, e.Name)
		}
	}
	var errs []error
	for _, f := range netfilter.Families {
		for _, t := range netfilter.Tables {
			d, ok := netfilter.Dump(f, t)
			prev, recorded := led.Find(ledger.Existing, beforeRules(f, t))
			if !ok || !recorded {
				continue
			}
			chains := netfilter.Created(led, f, t, d, []string{"DOCKER"})
			for _, r := range d.Rules {
				if len(r) < 2 || slices.Contains(chains, r[1]) || slices.Contains(prev.Args, strings.Join(r, " ")) {
					continue
				}
				if mentionsAny(r, own) {
					if err := netfilter.Run(f, append([]string{"-t", t, "-D"}, r[1:]...)...); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
	}
	errs = append(errs, netfilter.RemoveCreated(led, []string{"DOCKER"}, nil))
	return errors.Join(errs...)
}

// mentionsAny: the rule names one of the interfaces (-i/-o).
func mentionsAny(rule, links []string) bool {
	for i := range rule {
		if (rule[i] == "-i" || rule[i] == "-o") && i+1 < len(rule) && slices.Contains(links, rule[i+1]) {
			return true
		}
	}
	return false
}

func waitFor(ctx context.Context, timeout time.Duration, ok func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = ok(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready within %s: %v", timeout, last)
}

func dialUnix(path string) error {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return err
	}
	return conn.Close()
}

// ping asks the Docker API at socket for /_ping.
func ping(ctx context.Context, socket string) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/_ping: %s", resp.Status)
	}
	return nil
}
