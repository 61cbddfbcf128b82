package node

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/netfilter"
	"github.com/purchase-system/purchase-system/devcluster/internal/take"
)

// What the node takes from the host, each thing recorded in the ledger
// before it is taken, and given back by GiveBack.

// SetUpHost takes what must exist before anything starts: the names the
// host held at the first up (so that Down can tell the programs' chains
// and sets from anyone else's), the bridge (the API server binds to its
// address), the route of the service range, the cgroup root, the shared
// directories upstream writes to and the node had to create, the
// launcher's netfilter rules, and the sysctls. It is idempotent: a second
// up takes nothing twice.
func SetUpHost(c Config, led *ledger.Ledger) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	if err := netfilter.RecordExisting(led); err != nil {
		return err
	}
	if err := take.Link(led, Bridge, []string{"link", "add", Bridge, "type", "bridge"}); err != nil {
		return err
	}
	if !strings.Contains(take.IPOut("addr", "show", "dev", Bridge), HostIP+"/16") {
		if err := take.IP("addr", "add", HostIP+"/16", "dev", Bridge); err != nil {
			return err
		}
	}
	if err := take.IP("link", "set", Bridge, "up"); err != nil {
		return err
	}
	// Cluster IPs are routed to the bridge: kube-proxy's DNAT rewrites
	// them on the way, and a packet to an unassigned one stays on the
	// bridge instead of following the host's default route off the machine.
	if err := take.Route(led, ServiceCIDR, "dev", Bridge); err != nil {
		return err
	}
	if err := takeCgroupRoot(led); err != nil {
		return err
	}
	for _, p := range sharedPaths() {
		if err := take.IfAbsent(led, p.path, p.dir); err != nil {
			return err
		}
	}
	if err := takeNetfilter(led); err != nil {
		return err
	}
	return take.Sysctls(led, []take.Sysctl{
		// Pod → Service → pod on the same bridge is routed through the host.
		{Key: "net/ipv4/ip_forward", Value: "1"},
		// Bridged pod-to-pod traffic passes iptables: NetworkPolicies and
		// Services between pods of one bridge need it.
		{Key: "net/bridge/bridge-nf-call-iptables", Value: "1"},
		// kube-proxy serves NodePorts on 127.0.0.1 (the seed's
		// localhost:30080). Set only now that DEVCLUSTER-LOCALNET drops
		// packets to 127.0.0.0/8 arriving from any other interface
		// (CVE-2020-8558): without it a neighbour, or another network
		// namespace on this machine, could reach services bound to
		// loopback.
		{Key: "net/ipv4/conf/all/route_localnet", Value: "1"},
	})
}

// kernelDefaults are the settings the kubelet requires
// (pkg/kubelet/cm setupKernelTunables). With protectKernelDefaults it
// fails when they differ instead of changing them behind the ledger.
var kernelDefaults = []take.Sysctl{
	{Key: "vm/overcommit_memory", Value: "1"},
	{Key: "vm/panic_on_oom", Value: "0"},
	{Key: "kernel/panic", Value: "10"},
	{Key: "kernel/panic_on_oops", Value: "1"},
	{Key: "kernel/keys/root_maxkeys", Value: "1000000"},
	{Key: "kernel/keys/root_maxbytes", Value: "25000000"},
}

func takeKernelDefaults(led *ledger.Ledger) error { return take.Sysctls(led, kernelDefaults) }

// takeCgroupRoot creates CgroupRoot in every hierarchy (the kubelet
// refuses a cgroup root that does not exist), with the cpus and memory
// nodes of the root, without which no task can join a v1 cpuset.
func takeCgroupRoot(led *ledger.Ledger) error {
	for _, h := range take.Hierarchies() {
		dir := filepath.Join(h, CgroupRoot)
		if _, err := os.Stat(dir); err == nil {
			continue
		}
		if err := led.Record(ledger.Entry{Kind: ledger.Cgroup, Name: dir}); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
				}
			}
		}
	}
	return nil
}

// GiveBack gives back every entry of the ledger (take.GiveBack).
func GiveBack(led *ledger.Ledger, progress io.Writer) error { return take.GiveBack(led, progress) }

// killCgroupRoot SIGKILLs every process under CgroupRoot (the pods'
// processes of a node that was killed; none are left after a clean stop).
func killCgroupRoot() error {
	var errs []error
	for _, h := range take.Hierarchies() {
		errs = append(errs, take.KillCgroupTree(filepath.Join(h, CgroupRoot)))
	}
	return errors.Join(errs...)
}
