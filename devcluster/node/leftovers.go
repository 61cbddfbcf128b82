package node

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/purchase-system/purchase-system/devcluster/internal/take"

	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/netfilter"
)

// Leftovers lists what of the node is still on the host: entries of its
// ledger not given back, its daemons and shims, what runs in or remains of
// its cgroup root, mounts under its directories, its entries in the shared
// directories, its bridge and the launcher's chains. Empty after Down.
// (Chains and sets of the node's programs are told apart only with the
// ledger's record; the cluster tests compare the whole host before and
// after instead.)
func Leftovers(c Config, ledgerPath string) []string {
	var out []string
	if led, err := ledger.Load(ledgerPath); err == nil {
		for _, e := range led.Entries() {
			if e.Kind != ledger.Existing {
				out = append(out, "not given back: "+e.String())
			}
		}
	}
	for _, name := range Components {
		if pid, ok := c.Daemons().Running(name); ok {
			out = append(out, fmt.Sprintf("process %s (pid %d)", name, pid))
		}
	}
	for _, pid := range take.ShimsServing(c.Socket()) {
		out = append(out, fmt.Sprintf("shim of the node's containerd (pid %d)", pid))
	}
	for _, h := range take.Hierarchies() {
		root := filepath.Join(h, CgroupRoot)
		if _, err := os.Stat(root); err == nil {
			out = append(out, "cgroup "+root)
		}
	}
	for _, m := range append(take.MountsUnder(c.Dir), take.MountsUnder(c.ImageDir)...) {
		out = append(out, "mount "+m)
	}
	for _, l := range c.ownLogLinks() {
		out = append(out, "log link "+l)
	}
	for _, r := range ownCNIResults() {
		out = append(out, "CNI result "+r)
	}
	if take.LinkExists(Bridge) {
		out = append(out, "bridge "+Bridge)
	}
	for _, f := range netfilter.Families {
		for _, t := range netfilter.Tables {
			d, _ := netfilter.Dump(f, t)
			for _, ch := range d.Chains {
				if strings.HasPrefix(ch, ChainPrefix) {
					out = append(out, fmt.Sprintf("%s chain %s/%s", f, t, ch))
				}
			}
		}
	}
	return out
}

// Legacy lists what an earlier version of this launcher (one without a
// ledger) left on the host, each with the command that removes it. It
// looks only when that launcher's marks are in stateDir (its pid files or
// its sysctls.json): otherwise the same names may well be someone else's.
// Nothing is removed here.
func Legacy(stateDir string, c Config) []Conflict {
	var marks []string
	pidFiles, _ := filepath.Glob(filepath.Join(stateDir, "pids", "*.pid"))
	nodePidFiles, _ := filepath.Glob(filepath.Join(c.Dir, "pids", "*.pid"))
	marks = append(pidFiles, nodePidFiles...)
	oldSysctls := filepath.Join(c.Dir, "sysctls.json")
	if _, err := os.Stat(oldSysctls); err == nil {
		marks = append(marks, oldSysctls)
	}
	if len(marks) == 0 {
		return nil
	}
	const why = "left by an earlier version of this project's launcher, which kept no record"
	var out []Conflict
	for _, dir := range []daemon.Dir{daemon.Dir(stateDir), c.Daemons()} {
		for _, name := range dir.Names() {
			if pid, ok := dir.Running(name); ok {
				out = append(out, Conflict{fmt.Sprintf("process %s (pid %d), %s", name, pid, why), fmt.Sprintf("kill %d", pid)})
			}
		}
	}
	if b, err := os.ReadFile(oldSysctls); err == nil {
		saved := map[string]string{}
		_ = json.Unmarshal(b, &saved)
		for k, v := range saved {
			out = append(out, Conflict{fmt.Sprintf("sysctl %s changed by an earlier launcher (it was %s)", take.Dotted(k), v), fmt.Sprintf("sysctl -w %s=%s", take.Dotted(k), v)})
		}
	}
	if take.LinkExists(Bridge) {
		out = append(out, Conflict{"bridge " + Bridge + ", " + why, "ip link del " + Bridge})
	}
	for _, h := range take.Hierarchies() {
		if _, err := os.Stat(filepath.Join(h, "kubepods")); err == nil {
			out = append(out, Conflict{fmt.Sprintf("cgroup %s/kubepods, %s (unless a kubelet of another cluster uses it)", h, why),
				fmt.Sprintf("find %s/kubepods -depth -type d -exec rmdir {} \\;", h)})
		}
	}
	for _, f := range netfilter.Families {
		for _, t := range netfilter.Tables {
			d, _ := netfilter.Dump(f, t)
			var chains []string
			for _, ch := range d.Chains {
				if netfilter.HasPrefix(ch, programChainPrefixes) {
					chains = append(chains, ch)
				}
			}
			if len(chains) > 0 {
				out = append(out, Conflict{fmt.Sprintf("%s chains in table %s, %s (unless another kube-proxy uses them): %s", f, t, why, abbreviate(chains, 6)),
					fmt.Sprintf("%s-save -t %s | grep -v -e '-j KUBE-' -e '-j CNI-' -e '^:KUBE-' -e '^:CNI-' -e '^-A KUBE-' -e '^-A CNI-' | %s-restore -T %s", f, t, f, t)})
			}
		}
	}
	for _, m := range append(take.MountsUnder(stateDir), take.MountsUnder("/run/containerd")...) {
		out = append(out, Conflict{"mount " + m + ", " + why, "umount -l " + m})
	}
	return out
}
