package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ip runs iproute2's ip.
func ip(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func ipOut(args ...string) string {
	out, _ := exec.Command("ip", args...).Output()
	return string(out)
}

var localClient = &http.Client{Timeout: 2 * time.Second}

func httpOK(ctx context.Context, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := localClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", url, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

// processesNamed lists the pids whose executable has this base name.
func processesNamed(name string) []int {
	var pids []int
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range exes {
		exe, err := os.Readlink(p)
		if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != name {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
		pids = append(pids, pid)
	}
	return pids
}

// killGroup SIGKILLs pid's process group and pid itself.
func killGroup(pid int) error {
	if pgid, err := syscall.Getpgid(pid); err == nil && pgid > 1 {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

// unmountUnder lazily unmounts every mount below the given paths, deepest
// first (overlay roots, shm, netns binds, the kubelet's volume tmpfs).
func unmountUnder(prefixes ...string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var targets []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		for _, p := range prefixes {
			if p != "" && (mp == p || strings.HasPrefix(mp, strings.TrimSuffix(p, "/")+"/")) {
				targets = append(targets, mp)
				break
			}
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	var errs []error
	for _, t := range targets {
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeNetns removes the pods' network namespaces the CNI plugins left
// (containerd names them cni-<uuid>).
func removeNetns() error {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "cni-") {
			continue
		}
		p := filepath.Join("/run/netns", e.Name())
		_ = unix.Unmount(p, unix.MNT_DETACH)
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers
// and the unified v2 one).
func cgroupHierarchies() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// The filesystem type follows the " - " separator.
		for i := range f {
			if f[i] == "-" && i+1 < len(f) && (f[i+1] == "cgroup" || f[i+1] == "cgroup2") {
				out = append(out, unescapeMount(f[4]))
			}
		}
	}
	return out
}

// removeCgroups removes the kubelet's /kubepods tree in every hierarchy,
// deepest first (a cgroup is removed with rmdir once it has no children
// and no processes).
func removeCgroups() error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, "kubepods")
		if _, err := os.Stat(root); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := removeCgroup(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroup retries for a moment: a just-killed process leaves its
// cgroup only once the kernel has reaped it.
func removeCgroup(dir string) error {
	var err error
	for range 50 {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); len(bytes.TrimSpace(procs)) > 0 {
			for _, s := range strings.Fields(string(procs)) {
				if pid, _ := strconv.Atoi(s); pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup %s: %w", dir, err)
}

// vethsOnBridge lists the host ends of pods' veth pairs still on the bridge.
func vethsOnBridge() []string {
	var out []string
	for _, line := range strings.Split(ipOut("-o", "link", "show", "master", Bridge), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			out = append(out, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return out
}

// removeVeths deletes the host ends of veth pairs still on the bridge (a
// pod whose sandbox was not torn down through CNI after a kill). Only the
// bridge's ports: the host's other interfaces are never touched.
func removeVeths() error {
	var errs []error
	for _, name := range vethsOnBridge() {
		if err := ip("link", "del", name); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ContainerPID is the host pid of the first process of a pod's container,
// read from the container's cgroup (the kubelet with the cgroupfs driver
// puts it at kubepods/[<qos>/]pod<uid>/<container id>). containerID is the
// pod status' "containerd://<id>".
func ContainerPID(podUID, containerID string) (int, error) {
	id, ok := strings.CutPrefix(containerID, "containerd://")
	if !ok {
		return 0, fmt.Errorf("container %q is not run by containerd", containerID)
	}
	var files []string
	for _, pattern := range []string{"/sys/fs/cgroup/pids/kubepods/pod%s/%s/cgroup.procs", "/sys/fs/cgroup/pids/kubepods/*/pod%s/%s/cgroup.procs"} {
		m, _ := filepath.Glob(fmt.Sprintf(pattern, podUID, id))
		files = append(files, m...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if fields := strings.Fields(string(b)); len(fields) > 0 {
			return strconv.Atoi(fields[0])
		}
	}
	return 0, fmt.Errorf("no process in the cgroup of container %s of pod %s", id, podUID)
}
