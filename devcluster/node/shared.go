package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/purchase-system/purchase-system/devcluster/internal/take"
)

// Shared directories: upstream writes there whatever it is told, and a
// Docker, a system containerd or another cluster's kubelet may write there
// too. The node removes only its own entries, known by what names them.
const (
	// ShimSocketDir holds every containerd shim's socket on the machine
	// (take.ShimSocketDir).
	ShimSocketDir = take.ShimSocketDir
	// DevicePluginDir is where the kubelet serves its device plugin
	// registration socket (fixed in k8s.io/kubelet's deviceplugin API).
	DevicePluginDir = "/var/lib/kubelet/device-plugins"
	// ContainerLogLinks holds the kubelet's links to container logs
	// (fixed in pkg/kubelet); the node's point into its pod log
	// directory.
	ContainerLogLinks = "/var/log/containers"
	// CNIResults is libcni's cache of attachments; the node's carry its
	// network's name (CNINetwork).
	CNIResults = "/var/lib/cni/results"
	// LibmountDir is util-linux's runtime directory (utab and its lock).
	LibmountDir = "/run/mount"
)

type sharedPath struct {
	path string
	dir  bool
}

// sharedPaths are the shared directories, with the parents that may be
// missing, and the kubelet's device plugin files: recorded at up when
// absent, removed at down when still empty.
func sharedPaths() []sharedPath {
	return []sharedPath{
		{"/run/containerd", true}, {ShimSocketDir, true},
		{"/var/lib/kubelet", true}, {DevicePluginDir, true},
		{filepath.Join(DevicePluginDir, "kubelet.sock"), false},
		{filepath.Join(DevicePluginDir, "kubelet_internal_checkpoint"), false},
		{ContainerLogLinks, true},
		{"/var/lib/cni", true}, {CNIResults, true},
		// The kubelet's mount library runs umount(8) once at start (to
		// learn how it reports "not mounted"), and libmount makes its
		// lock directory: /run/mount, when the machine had none.
		{LibmountDir, true},
	}
}

// shimSockets are the socket paths of the node's shims, read from the
// bundles in containerd's state.
func (c Config) shimSockets() []string { return take.ShimSockets(c.ContainerdState()) }

// sandboxes are the ids of the pod sandboxes the node's containerd
// knows, from its state.
func (c Config) sandboxes() []string {
	var ids []string
	for _, pattern := range []string{
		filepath.Join(c.ContainerdState(), "io.containerd.grpc.v1.cri", "sandboxes", "*"),
		filepath.Join(c.ContainerdState(), "io.containerd.runtime.v2.task", "*", "*"),
	} {
		m, _ := filepath.Glob(pattern)
		for _, p := range m {
			ids = append(ids, filepath.Base(p))
		}
	}
	return ids
}

// removeSharedEntries removes the node's entries from the shared
// directories: its shims' sockets, the log links into its pod log
// directory, its network's CNI results and the loopback results of its
// sandboxes (containerd names that network cni-loopback for everyone).
func (c Config) removeSharedEntries(shimSockets, sandboxes []string) error {
	var errs []error
	rm := func(p string) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, s := range shimSockets {
		rm(s)
	}
	for _, l := range c.ownLogLinks() {
		rm(l)
	}
	for _, r := range ownCNIResults() {
		rm(r)
	}
	for _, id := range sandboxes {
		rm(filepath.Join(CNIResults, "cni-loopback-"+id+"-lo"))
	}
	return errors.Join(errs...)
}

// ownLogLinks are the links in ContainerLogLinks that point into the
// node's pod log directory.
func (c Config) ownLogLinks() []string {
	ents, _ := os.ReadDir(ContainerLogLinks)
	var out []string
	for _, e := range ents {
		p := filepath.Join(ContainerLogLinks, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, c.PodLogs()+"/") {
			out = append(out, p)
		}
	}
	return out
}

func ownCNIResults() []string {
	m, _ := filepath.Glob(filepath.Join(CNIResults, CNINetwork+"-*"))
	return m
}

// killShims SIGKILLs the node's shims (with their containers in the pods'
// cgroups, killed on their own) and returns the sockets they listened on
// in ShimSocketDir: a shim killed leaves its socket, and one that started
// after the bundles were read (a pod the kubelet was still creating) is
// in no bundle.
func killShims(socket string) []string {
	var sockets []string
	for _, pid := range take.ShimsServing(socket) {
		for _, s := range take.ListeningSockets(pid) {
			if filepath.Dir(s) == ShimSocketDir {
				sockets = append(sockets, s)
			}
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return sockets
}

// liveUnixSocket reports whether a process listens on the unix socket at
// path (a connection opens).
func liveUnixSocket(path string) bool {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return false
	}
	defer syscall.Close(fd)
	return syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}) == nil
}
