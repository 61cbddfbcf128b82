package node

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/purchase-system/purchase-system/devcluster/internal/take"

	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/netfilter"
)

// Conflict is something on the host the cluster would collide with, and
// what to do about it.
type Conflict struct {
	What string
	Fix  string
}

func (c Conflict) String() string { return c.What + "\n    " + c.Fix }

// Conflicts names what on this host the node would collide with; led is
// the cluster's ledger (empty before the first up). Not conflicts, and
// left alone: foreign files in the shared directories (/etc/cni/net.d,
// /var/lib/kubelet, /run/mount, ...), foreign processes whatever their
// names (containerd-shim-runc-v2 of a Docker), a running dockerd and its
// containers, chains and bridges of other names.
func Conflicts(c Config, led *ledger.Ledger) []Conflict {
	var out []Conflict
	if take.LinkExists(Bridge) {
		if _, ours := led.Find(ledger.Link, Bridge); !ours {
			out = append(out, Conflict{
				fmt.Sprintf("a network interface %s exists that this cluster did not create", Bridge),
				fmt.Sprintf("if it is left from an earlier version of this project's launcher: ip link del %s", Bridge)})
		}
	}
	out = append(out, routeConflicts()...)
	out = append(out, chainConflicts(led)...)
	for _, fam := range []string{"ip", "ip6"} {
		if exec.Command("nft", "list", "table", fam, "kube-proxy").Run() == nil {
			out = append(out, Conflict{
				fmt.Sprintf("nftables table %s kube-proxy exists: another kube-proxy (nftables mode) runs on this machine, and the node's kube-proxy would delete that table at its start", fam),
				"stop that cluster's kube-proxy first, or run this project on kind (e2e/kind/run.sh)"})
		}
	}
	if sock := filepath.Join(DevicePluginDir, "kubelet.sock"); liveUnixSocket(sock) {
		if _, running := c.Daemons().Running(Kubelet); !running {
			out = append(out, Conflict{
				fmt.Sprintf("%s answers: another kubelet runs on this machine (%s)", sock, describeSocketOwner(sock)),
				"the kubelet's device plugin socket is fixed upstream, so two kubelets cannot share a machine: stop the other one, or run this project on kind (e2e/kind/run.sh)"})
		}
	}
	for _, h := range take.Hierarchies() {
		dir := filepath.Join(h, CgroupRoot)
		if _, err := os.Stat(dir); err == nil {
			if _, ours := led.Find(ledger.Cgroup, dir); !ours {
				out = append(out, Conflict{
					fmt.Sprintf("cgroup %s exists but this cluster's ledger does not name it", dir),
					fmt.Sprintf("if nothing runs in it (cat %s/cgroup.procs), remove it: find %s -depth -type d -exec rmdir {} \\;", dir, dir)})
			}
		}
	}
	return out
}

// routeConflicts: another interface already routes or holds an address in
// the pod or service ranges.
func routeConflicts() []Conflict {
	var out []Conflict
	_, pods, _ := net.ParseCIDR(PodCIDR)
	_, svcs, _ := net.ParseCIDR(ServiceCIDR)
	for _, line := range strings.Split(take.IPOut("-o", "-4", "route", "show", "table", "main"), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] == "default" {
			continue
		}
		_, dst, err := net.ParseCIDR(f[0])
		if err != nil {
			if ip := net.ParseIP(f[0]); ip != nil {
				dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}
			} else {
				continue
			}
		}
		dev := ""
		if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) {
			dev = f[i+1]
		}
		if dev == Bridge {
			continue
		}
		for _, r := range []*net.IPNet{pods, svcs} {
			if dst.Contains(r.IP) || r.Contains(dst.IP) {
				out = append(out, Conflict{
					fmt.Sprintf("route %q overlaps the cluster's range %s", strings.TrimSpace(line), r),
					"the pod (10.88.0.0/16) and service (10.96.0.0/16) ranges must be free on this machine: remove that network, or run this project on kind (e2e/kind/run.sh)"})
			}
		}
	}
	return out
}

// chainConflicts: chains with the names the node's programs use that the
// cluster did not create (a kube-proxy or kube-router of another cluster,
// or an earlier version of this launcher).
func chainConflicts(led *ledger.Ledger) []Conflict {
	var out []Conflict
	for _, f := range netfilter.Families {
		for _, t := range netfilter.Tables {
			d, ok := netfilter.Dump(f, t)
			if !ok {
				continue
			}
			before, recorded := led.Find(ledger.Existing, netfilter.ExistingName(f, t))
			var foreign []string
			for _, ch := range d.Chains {
				if !netfilter.HasPrefix(ch, programChainPrefixes) {
					continue
				}
				// With a record, a chain absent at the first up is the
				// node's; without one, every such chain is someone else's.
				if !recorded || slices.Contains(before.Args, ch) {
					foreign = append(foreign, ch)
				}
			}
			if len(foreign) > 0 {
				out = append(out, Conflict{
					fmt.Sprintf("%s table %s holds chains this cluster did not create: %s", f, t, abbreviate(foreign, 6)),
					"another kube-proxy, kube-router or CNI plugin runs here, or an earlier version of this launcher left them (make cluster-down lists its leftovers with the commands that remove them)"})
			}
		}
	}
	return out
}

func abbreviate(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:n], ", ") + fmt.Sprintf(" and %d more", len(names)-n)
}

// PortConflicts names the ports of ports that something listens on
// already, with the process that holds each.
func PortConflicts(ports []Port) []Conflict {
	listening := listeners()
	var out []Conflict
	for _, p := range ports {
		for _, l := range listening {
			if l.port != p.Port || !overlaps(l.addr, p.Addr) {
				continue
			}
			what := p.Component
			if p.Use != "" {
				what += " " + p.Use
			}
			out = append(out, Conflict{
				fmt.Sprintf("port %d (%s) is in use: %s listens on %s", p.Port, what, describeInode(l.inode), net.JoinHostPort(l.addr, strconv.Itoa(l.port))),
				"stop that program, or take this cluster down where it runs (make cluster-down in its checkout)"})
			break
		}
	}
	return out
}

// overlaps: a listener on have collides with a bind to want ("" = all
// addresses).
func overlaps(have, want string) bool {
	wildcard := func(a string) bool { return a == "" || a == "0.0.0.0" || a == "::" }
	return wildcard(have) || wildcard(want) || have == want
}

type listener struct {
	addr  string
	port  int
	inode string
}

// listeners reads the TCP sockets in LISTEN state.
func listeners() []listener {
	var out []listener
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Scan()
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" {
				continue
			}
			host, port, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			p, err := strconv.ParseInt(port, 16, 32)
			if err != nil {
				continue
			}
			out = append(out, listener{addr: hexAddr(host), port: int(p), inode: fields[9]})
		}
		fh.Close()
	}
	return out
}

// hexAddr decodes /proc/net/tcp's little-endian hex address.
func hexAddr(h string) string {
	b := make([]byte, len(h)/2)
	for i := range b {
		v, _ := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
		b[i] = byte(v)
	}
	// Each 32-bit word is in host (little-endian) order.
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	return net.IP(b).String()
}

// describeInode names the process holding a socket inode.
func describeInode(inode string) string {
	want := "socket:[" + inode + "]"
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == want {
			pid := strings.Split(fd, "/")[2]
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			return fmt.Sprintf("pid %s (%s)", pid, strings.TrimSpace(string(comm)))
		}
	}
	return "a process"
}

// describeSocketOwner names the process listening on a unix socket path.
func describeSocketOwner(path string) string {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return "a process"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[len(f)-1] == path {
			return describeInode(f[6])
		}
	}
	return "a process"
}
