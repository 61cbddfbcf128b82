// Package podnet gives each pod of the process node a network of its own,
// the way a CNI bridge plugin does: a Linux network namespace per pod,
// joined to a host bridge by a veth pair, with its own IP address. Programs
// in a pod bind their usual ports (":8080") without clashing with other
// replicas, and reach the host, other pods and Service cluster IPs.
//
// Addresses:
//
//	10.88.0.1/16   the bridge: the node's (and the host services') address
//	10.88.1.0+     pod IPs
//	10.96.0.0/16   Service cluster IPs, routed "local" on the host so the
//	               node's service proxy can listen on any of them
//
// Loopback addresses (127.x) cannot be pod IPs: the API server rejects
// them in EndpointSlices, so Services would never get endpoints.
//
// Everything here needs root (CAP_NET_ADMIN) and uses iproute2's ip.
package podnet

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Defaults of the dev cluster's network.
const (
	Bridge      = "psbr0"
	PodCIDR     = "10.88.0.0/16"
	HostIP      = "10.88.0.1"
	ServiceCIDR = "10.96.0.0/16"
)

// ip runs iproute2's ip.
func ip(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "Operation not permitted") {
			return fmt.Errorf("ip %s: %s (the process node needs root: CAP_NET_ADMIN)", strings.Join(args, " "), msg)
		}
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, msg)
	}
	return nil
}

func ipOut(args ...string) string {
	out, _ := exec.Command("ip", args...).Output()
	return string(out)
}

// CheckPrivileges fails early, with what to do, when this process cannot
// configure the network.
func CheckPrivileges() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the process node needs iproute2's ip command (apt-get install iproute2)")
	}
	if os.Geteuid() != 0 {
		return errors.New("the process node needs root: it creates a network namespace per pod")
	}
	return nil
}

// SetUpHost creates the bridge with the host address and routes the
// service range locally. It is idempotent.
func SetUpHost() error {
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
	if !strings.Contains(ipOut("route", "show", "table", "local"), ServiceCIDR) {
		if err := ip("route", "add", "local", ServiceCIDR, "dev", "lo"); err != nil {
			return err
		}
	}
	return nil
}

// TearDownHost removes what SetUpHost created, and any pod namespaces left
// behind by a node that was killed.
func TearDownHost() error {
	var errs []error
	for _, ns := range Namespaces() {
		errs = append(errs, DeletePod(ns))
	}
	if strings.Contains(ipOut("route", "show", "table", "local"), ServiceCIDR) {
		errs = append(errs, ip("route", "del", "local", ServiceCIDR, "dev", "lo", "table", "local"))
	}
	if strings.Contains(ipOut("link", "show", Bridge), Bridge) {
		errs = append(errs, ip("link", "del", Bridge))
	}
	return errors.Join(errs...)
}

// nsPrefix marks the namespaces this package owns.
const nsPrefix = "psn-"

// Namespaces lists the pod network namespaces that exist.
func Namespaces() []string {
	var out []string
	for _, line := range strings.Split(ipOut("netns", "list"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			out = append(out, f[0])
		}
	}
	return out
}

// NamespaceName is the network namespace of the pod with this uid.
func NamespaceName(podUID string) string {
	sum := sha256.Sum256([]byte(podUID))
	return nsPrefix + hex.EncodeToString(sum[:5])
}

func vethName(ns string) string { return "v" + strings.TrimPrefix(ns, nsPrefix) }

// HostsDir is where `ip netns exec` looks for files to bind over /etc
// inside the namespace (hosts, resolv.conf).
func HostsDir(ns string) string { return filepath.Join("/etc/netns", ns) }

// SetUpPod creates the pod's namespace with podIP on eth0, its default
// route via the bridge, and loopback up.
func SetUpPod(ns string, podIP net.IP) error {
	_ = DeletePod(ns) // a leftover from a killed node
	veth := vethName(ns)
	steps := [][]string{
		{"netns", "add", ns},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", veth, "master", Bridge, "up"},
		{"-n", ns, "addr", "add", podIP.String() + "/16", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "route", "add", "default", "via", HostIP},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			_ = DeletePod(ns)
			return err
		}
	}
	return nil
}

// DeletePod removes the pod's namespace (and with it its veth) and its
// /etc/netns files.
func DeletePod(ns string) error {
	var err error
	if strings.Contains(ipOut("netns", "list"), ns) {
		err = ip("netns", "del", ns)
	}
	if strings.Contains(ipOut("link", "show", vethName(ns)), vethName(ns)) {
		_ = ip("link", "del", vethName(ns))
	}
	_ = os.RemoveAll(HostsDir(ns))
	return err
}

// Allocator hands out pod IPs from 10.88.1.0 to 10.88.255.254.
type Allocator struct {
	mu   sync.Mutex
	used map[uint32]bool
	next uint32
}

var (
	firstPodIP = ipToInt(net.ParseIP("10.88.1.0"))
	lastPodIP  = ipToInt(net.ParseIP("10.88.255.254"))
)

func ipToInt(ip net.IP) uint32 { return binary.BigEndian.Uint32(ip.To4()) }

func intToIP(n uint32) net.IP {
	b := make(net.IP, 4)
	binary.BigEndian.PutUint32(b, n)
	return b
}

// Allocate returns a free pod IP. Addresses are handed out in a ring, so a
// just-released address is not reused at once (a late packet or probe
// cannot reach the wrong pod).
func (a *Allocator) Allocate() (net.IP, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.used == nil {
		a.used, a.next = map[uint32]bool{}, firstPodIP
	}
	for range lastPodIP - firstPodIP + 1 {
		n := a.next
		a.next++
		if a.next > lastPodIP {
			a.next = firstPodIP
		}
		if !a.used[n] && n&0xff != 0 && n&0xff != 0xff {
			a.used[n] = true
			return intToIP(n), nil
		}
	}
	return nil, errors.New("pod IP range 10.88.1.0-10.88.255.254 exhausted")
}

// Release returns ip to the pool.
func (a *Allocator) Release(ip net.IP) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.used, ipToInt(ip))
}
