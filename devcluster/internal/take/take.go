// Package take takes things from the host for the local cluster (and for
// the Docker daemon a test starts), writing each into a ledger before it
// is taken, and gives back what a ledger records: processes, sysctls,
// links, routes, netfilter chains, rules and policies, cgroups, and paths
// that were absent.
package take

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/netfilter"
)

// IP runs iproute2's ip.
func IP(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// IPOut is ip's output ("" on error).
func IPOut(args ...string) string {
	out, _ := exec.Command("ip", args...).Output()
	return string(out)
}

// Sysctl is a kernel setting by its path under /proc/sys, and a value.
type Sysctl struct{ Key, Value string }

// Dotted is the setting's name as sysctl(8) writes it.
func Dotted(key string) string { return strings.ReplaceAll(key, "/", ".") }

// Sysctls sets each value that differs, recording the old one first.
func Sysctls(led *ledger.Ledger, want []Sysctl) error {
	for _, s := range want {
		p := filepath.Join("/proc/sys", s.Key)
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", Dotted(s.Key), err)
		}
		old := strings.TrimSpace(string(b))
		if old == s.Value {
			continue
		}
		if err := led.Record(ledger.Entry{Kind: ledger.Sysctl, Name: s.Key, Old: old, New: s.Value}); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(s.Value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", Dotted(s.Key), s.Value, err)
		}
	}
	return nil
}

// LinkExists reports whether a network interface of that name exists.
func LinkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// Link creates a network interface with `ip add...` unless the ledger says
// it was created already; an interface of that name that the ledger does
// not name is an error.
func Link(led *ledger.Ledger, name string, add []string) error {
	if LinkExists(name) {
		if _, ours := led.Find(ledger.Link, name); ours {
			return nil
		}
		return fmt.Errorf("a network interface %s exists that was not created here", name)
	}
	if err := led.Record(ledger.Entry{Kind: ledger.Link, Name: name}); err != nil {
		return err
	}
	return IP(add...)
}

// Route adds a route to dst (args: the rest of `ip route add`) unless
// there is one.
func Route(led *ledger.Ledger, dst string, args ...string) error {
	if strings.Contains(IPOut(append([]string{"route", "show", dst}, args...)...), dst) {
		return nil
	}
	if err := led.Record(ledger.Entry{Kind: ledger.Route, Name: dst, Args: args}); err != nil {
		return err
	}
	return IP(append([]string{"route", "add", dst}, args...)...)
}

// IfAbsent records path (a directory if dir) when it is absent, for
// GiveBack to remove again if nobody else put anything in it meanwhile.
func IfAbsent(led *ledger.Ledger, path string, dir bool) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	kind := ledger.Dir
	if !dir {
		kind = ledger.File
	}
	if _, ok := led.Find(kind, path); ok {
		return nil
	}
	return led.Record(ledger.Entry{Kind: kind, Name: path})
}

// GiveBack gives back every entry of the ledger, newest first, and keeps
// in it only what could not be given back (for the next down, with the
// reason printed). A sysctl goes back to its old value only while it
// still holds the value the cluster set; a directory goes only when it is
// empty.
func GiveBack(led *ledger.Ledger, progress io.Writer) error {
	entries := led.Entries()
	var left []ledger.Entry
	var errs []error
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if err := giveBack(e, progress); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e, err))
			left = append([]ledger.Entry{e}, left...)
		}
	}
	if err := led.Keep(left); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func giveBack(e ledger.Entry, progress io.Writer) error {
	switch e.Kind {
	case ledger.Policy:
		family, table, chain, err := splitWhere(e.Name)
		if err != nil {
			return err
		}
		d, ok := netfilter.Dump(family, table)
		if !ok {
			return nil
		}
		if now := d.Policies[chain]; now != e.New {
			fmt.Fprintf(progress, "==> %s policy left at %s: it no longer has the %s set here (was %s before)\n", e.Name, now, e.New, e.Old)
			return nil
		}
		return netfilter.Run(family, "-t", table, "-P", chain, e.Old)
	case ledger.Process:
		if daemon.Alive(e.PID, e.Start) {
			// The daemon leads its own process group (daemon.Start).
			_ = syscall.Kill(-e.PID, syscall.SIGKILL)
			_ = syscall.Kill(e.PID, syscall.SIGKILL)
			for range 100 {
				if !daemon.Alive(e.PID, e.Start) {
					return nil
				}
				time.Sleep(20 * time.Millisecond)
			}
			return errors.New("still running after SIGKILL")
		}
	case ledger.Sysctl:
		p := filepath.Join("/proc/sys", e.Name)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if now := strings.TrimSpace(string(b)); now != e.New {
			fmt.Fprintf(progress, "==> sysctl %s left at %s: it no longer holds the %s set here (was %s before)\n", Dotted(e.Name), now, e.New, e.Old)
			return nil
		}
		return os.WriteFile(p, []byte(e.Old), 0o644)
	case ledger.Link:
		if LinkExists(e.Name) {
			return IP("link", "del", e.Name)
		}
	case ledger.Route:
		if strings.Contains(IPOut(append([]string{"route", "show", e.Name}, e.Args...)...), e.Name) {
			return IP(append([]string{"route", "del", e.Name}, e.Args...)...)
		}
	case ledger.Chain:
		return netfilter.DeleteChain(e.Name)
	case ledger.Rule:
		return netfilter.DeleteRule(e.Name, e.Args)
	case ledger.Cgroup:
		return RemoveCgroupTree(e.Name)
	case ledger.Dir:
		err := unix.Rmdir(e.Name)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
		case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
			fmt.Fprintf(progress, "==> %s left in place: it was created here, but it now holds others' entries\n", e.Name)
		default:
			return err
		}
	case ledger.File:
		if err := os.Remove(e.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	case ledger.Existing:
		// A note for Down, nothing to give back.
	default:
		return fmt.Errorf("unknown entry kind %q", e.Kind)
	}
	return nil
}

// KillCgroupTree SIGKILLs every process in the cgroup tree at root.
func KillCgroupTree(root string) error {
	var errs []error
	{
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			for _, pid := range CgroupProcs(p) {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
					errs = append(errs, fmt.Errorf("killing pid %d of %s: %w", pid, p, err))
				}
			}
			return nil
		})
	}
	return errors.Join(errs...)
}

// RemoveCgroupTree removes a cgroup and every cgroup below it, deepest
// first, killing what still runs in them (a cgroup is removed with rmdir
// once it has no children and no processes).
func RemoveCgroupTree(root string) error {
	if _, err := os.Stat(root); err != nil {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := removeCgroup(dirs[i]); err != nil {
			errs = append(errs, err)
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
		for _, pid := range CgroupProcs(dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup %s: %w", dir, err)
}

// CgroupProcs are the pids in one cgroup.
func CgroupProcs(dir string) []int {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, s := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(s); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

func splitWhere(where string) (family, table, chain string, err error) {
	f := strings.SplitN(where, "/", 3)
	if len(f) != 3 {
		return "", "", "", fmt.Errorf("netfilter place %q is not family/table/chain", where)
	}
	return f[0], f[1], f[2], nil
}

// Hierarchies lists the mounted cgroup hierarchies (v1 controllers and
// the unified v2 one).
func Hierarchies() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// The filesystem type follows the " - " separator.
		for i := range f {
			if f[i] == "-" && i+1 < len(f) && (f[i+1] == "cgroup" || f[i+1] == "cgroup2") {
				out = append(out, UnescapeMount(f[4]))
			}
		}
	}
	return out
}

// UnescapeMount undoes mountinfo's octal escapes (\040 for a space).
func UnescapeMount(s string) string {
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

// UnmountUnder lazily unmounts every mount below the given paths, deepest
// first (overlay roots, shm, netns binds, the kubelet's volume tmpfs).
func UnmountUnder(prefixes ...string) error {
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
		mp := UnescapeMount(f[4])
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

// ShimsServing lists the pids of containerd shims serving the containerd
// at socket: the shim's command line carries its containerd's address.
// Docker's shims, and any other containerd's, serve another address.
func ShimsServing(socket string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" {
			continue
		}
		for i := range args {
			if args[i] == "-address" && i+1 < len(args) && args[i+1] == socket {
				pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// MountsUnder lists the mount points at or below dir.
func MountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			if mp := UnescapeMount(f[4]); mp == dir || strings.HasPrefix(mp, prefix) {
				out = append(out, mp)
			}
		}
	}
	return out
}

// ListeningSockets lists the paths of the unix sockets the process pid
// holds open that have a path (/proc/net/unix names them by inode; the
// process's descriptors name the inodes it holds).
func ListeningSockets(pid int) []string {
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	held := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil {
			if ino, ok := strings.CutPrefix(l, "socket:["); ok {
				held[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	if len(held) == 0 {
		return nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode [Path]
		f := strings.Fields(line)
		if len(f) >= 8 && held[f[6]] && strings.HasPrefix(f[7], "/") {
			out = append(out, f[7])
		}
	}
	return out
}

// ShimSocketDir holds every containerd shim's socket on the machine:
// containerd fixes it at /run/containerd/s whatever its state directory
// (containerd#10502), so a Docker, a system containerd and the local
// cluster all write there.
const ShimSocketDir = "/run/containerd/s"

// ShimSockets are the sockets in ShimSocketDir of the shims whose bundles
// the containerd with state directory state keeps: containerd 2 names a
// shim's address in the bundle's bootstrap.json, containerd 1.6
// (Debian's, which Docker runs) in its address file. A shim that was
// killed leaves its socket behind, and its bundle is the only record of
// whose it is.
func ShimSockets(state string) []string {
	var out []string
	add := func(address string) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(address), "unix://"); ok && filepath.Dir(p) == ShimSocketDir {
			out = append(out, p)
		}
	}
	bundles, _ := filepath.Glob(filepath.Join(state, "io.containerd.runtime.v2.task", "*", "*"))
	for _, b := range bundles {
		if raw, err := os.ReadFile(filepath.Join(b, "bootstrap.json")); err == nil {
			var boot struct {
				Address string `json:"address"`
			}
			if json.Unmarshal(raw, &boot) == nil {
				add(boot.Address)
				continue
			}
		}
		if raw, err := os.ReadFile(filepath.Join(b, "address")); err == nil {
			add(string(raw))
		}
	}
	return out
}

// RecordShimSockets records in led the sockets of the shims whose bundles
// the containerd with state directory state keeps, so that GiveBack
// removes them once the shims are gone. It runs before that containerd
// starts (which removes the bundles of shims that died, and with them
// what tells their sockets from others') and before a down removes the
// state.
func RecordShimSockets(led *ledger.Ledger, state string) error {
	for _, sock := range ShimSockets(state) {
		if _, ok := led.Find(ledger.File, sock); ok {
			continue
		}
		if err := led.Record(ledger.Entry{Kind: ledger.File, Name: sock}); err != nil {
			return err
		}
	}
	return nil
}
