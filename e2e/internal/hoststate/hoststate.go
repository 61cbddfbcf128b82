// Package hoststate takes a picture of what this machine holds that a
// local cluster could change (network links and routes, netfilter chains,
// rules and policies, ipsets, kernel settings, mounts, top-level cgroups,
// the shared directories containerd, the kubelet and CNI write to), so a
// test can check that bringing a cluster up and down left the host
// exactly as it found it, whatever else (a Docker, planted files) was
// there.
package hoststate

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Sysctls a cluster on this machine may change: the node's (forwarding,
// bridge netfilter, route_localnet), the kubelet's kernel defaults, and
// what a privileged kind node running systemd would change.
var Sysctls = []string{
	"net/ipv4/ip_forward",
	"net/bridge/bridge-nf-call-iptables",
	"net/bridge/bridge-nf-call-ip6tables",
	"net/ipv4/conf/all/route_localnet",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"fs/file-max",
	"kernel/pid_max",
	"fs/protected_hardlinks",
	"fs/protected_symlinks",
	"fs/protected_regular",
	"fs/protected_fifos",
	"fs/inotify/max_user_instances",
	"fs/inotify/max_user_watches",
	"net/netfilter/nf_conntrack_max",
}

// SharedDirs are the host paths containerd, the kubelet, CNI and libmount
// write to outside any directory they are given.
var SharedDirs = []string{
	"/run/containerd", "/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods",
	"/etc/cni", "/opt/cni", "/run/mount", "/run/netns", "/opt/containerd", "/run/nri", "/etc/containerd",
}

// State is one picture, as named facts: kind → sorted lines.
type State map[string][]string

// Take takes the picture.
func Take() State {
	s := State{}
	s["links"] = lines(run("ip", "-o", "link", "show"), func(l string) string {
		// "3: psbr0: <...> ..." → name, without the changing counters.
		f := strings.Fields(l)
		if len(f) < 2 {
			return ""
		}
		return strings.TrimSuffix(f[1], ":")
	})
	s["routes"] = lines(run("ip", "route", "show", "table", "main"), nil)
	s["local routes"] = lines(run("ip", "route", "show", "table", "local"), nil)
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, t := range []string{"filter", "nat", "mangle", "raw"} {
			out, err := exec.Command(fam+"-save", "-t", t).Output()
			if err != nil {
				continue
			}
			s[fam+"/"+t] = lines(string(out), func(l string) string {
				if strings.HasPrefix(l, "#") || l == "COMMIT" || strings.HasPrefix(l, "*") {
					return ""
				}
				// ":FORWARD DROP [12:345]": the policy, not the counters.
				return counters.ReplaceAllString(l, "")
			})
		}
	}
	s["ipsets"] = lines(run("ipset", "list", "-n"), nil)
	for _, k := range Sysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", k)); err == nil {
			s["sysctls"] = append(s["sysctls"], k+"="+strings.TrimSpace(string(b)))
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		s["mounts"] = lines(string(b), func(l string) string {
			f := strings.Fields(l)
			if len(f) < 5 {
				return ""
			}
			return f[4]
		})
	}
	s["cgroups"] = topCgroups()
	for _, d := range SharedDirs {
		s["files under "+d] = tree(d)
	}
	for k := range s {
		sort.Strings(s[k])
		s[k] = slices.Compact(s[k])
	}
	return s
}

var counters = regexp.MustCompile(` \[\d+:\d+\]`)

// Diff lists what differs between two pictures, kind by kind.
func Diff(before, after State) []string {
	var out []string
	kinds := map[string]bool{}
	for k := range before {
		kinds[k] = true
	}
	for k := range after {
		kinds[k] = true
	}
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		gone, added := difference(before[k], after[k]), difference(after[k], before[k])
		for _, g := range gone {
			out = append(out, fmt.Sprintf("%s: gone: %s", k, g))
		}
		for _, a := range added {
			out = append(out, fmt.Sprintf("%s: added: %s", k, a))
		}
	}
	return out
}

// difference is what a holds that b does not.
func difference(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func run(name string, args ...string) string {
	out, _ := exec.Command(name, args...).Output()
	return string(out)
}

func lines(text string, pick func(string) string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if pick != nil {
			l = pick(l)
		}
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// topCgroups lists the cgroups directly under each hierarchy's root.
func topCgroups() []string {
	var out []string
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		for i := range f {
			if f[i] == "-" && i+1 < len(f) && (f[i+1] == "cgroup" || f[i+1] == "cgroup2") {
				ents, _ := os.ReadDir(f[4])
				for _, e := range ents {
					if e.IsDir() {
						out = append(out, filepath.Join(f[4], e.Name()))
					}
				}
			}
		}
	}
	return out
}

// tree lists every path under dir (the directory itself included), with
// its type.
func tree(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		out = append(out, p+" ("+d.Type().String()+")")
		return nil
	})
	return out
}
