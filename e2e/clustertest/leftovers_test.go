package clustertest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/purchase-system/purchase-system/devcluster/node"
)

// leftovers lists what the dev cluster and its host services left running
// or on disk after they were taken down: processes of the project's
// binaries or cached tools, listening ports of the cluster, pod network
// namespaces, the bridge, the service route, the state directories.
func leftovers() []string {
	var out []string
	toolsDir := filepath.Join(cacheHome(), "purchase-system")
	binDir := filepath.Join(repoRoot, "bin")
	stateDir := filepath.Join(repoRoot, ".cache")
	self := os.Getpid()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		if pid == self {
			continue
		}
		exe, _ := os.Readlink(p + "/exe")
		cmdline, _ := os.ReadFile(p + "/cmdline")
		cmd := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.HasPrefix(exe, toolsDir) || strings.HasPrefix(exe, binDir) ||
			strings.Contains(cmd, filepath.Join(stateDir, "devcluster")) || strings.Contains(cmd, filepath.Join(stateDir, "infra")) {
			out = append(out, fmt.Sprintf("process %d: %s", pid, strings.TrimSpace(cmd)))
		}
	}
	clusterPorts := map[int]string{2379: "etcd", 2380: "etcd peer", 6443: "kube-apiserver", 10250: "kubelet",
		10257: "kube-controller-manager", 10259: "kube-scheduler", 30080: "NodePort 30080", 9090: "prometheus"}
	for _, port := range listeningPorts() {
		if name, ok := clusterPorts[port]; ok {
			out = append(out, fmt.Sprintf("port %d (%s) still listening", port, name))
		}
	}
	if netns, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(netns), "psn-") {
		out = append(out, "pod network namespaces: "+strings.TrimSpace(string(netns)))
	}
	if link, _ := exec.Command("ip", "link", "show", "psbr0").CombinedOutput(); strings.Contains(string(link), "psbr0:") {
		out = append(out, "bridge psbr0")
	}
	// The service range is routed to the bridge in the main table
	// (node.SetUpHost).
	if routes, _ := exec.Command("ip", "route", "show", "table", "main").Output(); strings.Contains(string(routes), node.ServiceCIDR) {
		out = append(out, "route "+node.ServiceCIDR)
	}
	// The upstream node's own account of itself: its ledger's entries not
	// given back, daemons, shims, its cgroup root, mounts, shared entries.
	// (What the host holds beyond that is compared whole: hoststate.)
	n := node.Config{Dir: filepath.Join(stateDir, "devcluster", "node"), ImageDir: filepath.Join(stateDir, "containerd")}
	out = append(out, node.Leftovers(n, filepath.Join(stateDir, "devcluster", "host-ledger.jsonl"))...)
	for _, d := range []string{"devcluster", "infra"} {
		if _, err := os.Stat(filepath.Join(stateDir, d)); err == nil {
			out = append(out, "directory .cache/"+d)
		}
	}
	return out
}

func cacheHome() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return d
	}
	h, _ := os.UserHomeDir()
	return filepath.Join(h, ".cache")
}

// listeningPorts reads the TCP sockets in LISTEN state from /proc/net.
func listeningPorts() []int {
	var ports []int
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "0A" { // 0A = LISTEN
				continue
			}
			local := fields[1]
			if i := strings.LastIndexByte(local, ':'); i >= 0 {
				if port, err := strconv.ParseInt(local[i+1:], 16, 32); err == nil {
					ports = append(ports, int(port))
				}
			}
		}
		fh.Close()
	}
	return ports
}

// killCluster SIGKILLs every process of the cluster: the control plane and
// node daemons (by their binaries in the tools cache) and everything in
// the pods' cgroups, the node's shims included (their command lines name
// its state). It returns how many it killed.
func killCluster() int {
	toolsDir := filepath.Join(cacheHome(), "purchase-system")
	stateDir := filepath.Join(repoRoot, ".cache", "devcluster")
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		exe, _ := os.Readlink(p + "/exe")
		cmdline, _ := os.ReadFile(p + "/cmdline")
		cg, _ := os.ReadFile(p + "/cgroup")
		// The host's Prometheus (also from the tools cache) is not the cluster's.
		cluster := strings.HasPrefix(exe, toolsDir) && !strings.Contains(exe, "/prometheus-")
		if cluster || strings.Contains(string(cmdline), stateDir) || strings.Contains(string(cg), ":"+node.CgroupRoot+"/") {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(pids)
}
