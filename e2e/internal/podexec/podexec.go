// Package podexec is the last step of starting a container on the process
// node. The node starts it in new PID and UTS namespaces, inside the pod's
// network namespace and a mount namespace of its own (ip netns exec); from
// a Spec it assembles the container's root filesystem — the image's
// unpacked root under a writable layer (overlayfs), /proc, a minimal /dev,
// the pod's volumes, /etc/hosts and /etc/resolv.conf — pivots into it,
// applies the security context (capabilities, no_new_privs, user and
// groups, a read-only root) and replaces itself with the container's
// program, which so keeps this process's pid (1 in its namespace), parent
// and signals.
package podexec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mount is one bind mount: a host path at a path inside the container.
type Mount struct {
	Source, Target string
	ReadOnly       bool
}

// Spec is everything pod-exec needs, written by the node as JSON.
type Spec struct {
	// Rootfs is the image's unpacked root (read-only, shared by every
	// container of the image); Upper and Work hold this container's
	// writes (overlayfs); the root is assembled at Root.
	Rootfs, Upper, Work, Root string
	ReadOnlyRoot              bool
	// Mounts are the pod's volumes; Files are /etc/hosts and
	// /etc/resolv.conf (read-only).
	Mounts, Files []Mount
	Hostname      string
	UID, GID      uint32
	Groups        []uint32
	NoNewPrivs    bool
	// Capabilities kept (in every set for root; only in the bounding set
	// for other users, whose sets empty on setuid). Names like
	// "NET_BIND_SERVICE".
	Capabilities []string
	WorkingDir   string
	Argv         []string
	Env          []string
}

// Load reads a spec file.
func Load(path string) (Spec, error) {
	var s Spec
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		return s, fmt.Errorf("pod-exec spec %s: %w", path, err)
	}
	if len(s.Argv) == 0 {
		return s, errors.New("pod-exec: no program given")
	}
	return s, nil
}

// Run assembles the container and executes its program; it returns only
// on failure.
func Run(s Spec) error {
	// Capabilities and the bounding set are a thread's, not the process's
	// (Setuid and Setgid are applied to every thread by Go; Capset and
	// PR_CAPBSET_DROP are not), and execve takes the credentials of the
	// thread that calls it. Everything below, up to the exec, must run on
	// one thread: without this lock the program was now and then started
	// from another thread, with every capability.
	runtime.LockOSThread()
	// Mounts made here must not reach the host (ip netns exec gives a
	// mount namespace of its own; keep its mounts from propagating back),
	// and pivot_root wants a private parent.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	// Open every source before mounting anything: a mount can hide the
	// source of a later one (an emptyDir on /tmp hides a pod directory
	// under /tmp), and a descriptor still reaches what it opened.
	all := append(append([]Mount{}, s.Mounts...), s.Files...)
	fds := make([]int, len(all))
	for i, m := range all {
		fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount source %s: %w", m.Source, err)
		}
		fds[i] = fd
	}
	if err := rootfs(s); err != nil {
		return err
	}
	for i, m := range all {
		if err := bind(m, fds[i], s.Root); err != nil {
			return err
		}
	}
	if err := special(s.Root); err != nil {
		return err
	}
	if s.ReadOnlyRoot {
		// The root itself read-only; the mounts on it keep their own
		// flags (volumes writable, /proc, /dev).
		if err := unix.Mount("", s.Root, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making the root read-only: %w", err)
		}
	}
	if err := pivot(s.Root); err != nil {
		return err
	}
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("working directory %s: %w", wd, err)
	}
	env := s.Env
	path, err := lookPath(s.Argv[0], env)
	if err != nil {
		return err
	}
	if err := credentials(s); err != nil {
		return err
	}
	return syscall.Exec(path, s.Argv, env)
}

// rootfs mounts the image's root with this container's writable layer
// over it at s.Root.
func rootfs(s Spec) error {
	for _, d := range []string{s.Upper, s.Work, s.Root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.Rootfs, s.Upper, s.Work)
	if err := unix.Mount("overlay", s.Root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the image's root (%s): %w", opts, err)
	}
	return nil
}

// bind mounts a host path (by its descriptor) at its target under root,
// creating the mount point in the container's writable layer.
func bind(m Mount, fd int, root string) error {
	src := fmt.Sprintf("/proc/self/fd/%d", fd)
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("mount source %s: %w", m.Source, err)
	}
	target := filepath.Join(root, filepath.Clean("/"+m.Target))
	if st.IsDir() {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
	} else if _, err := os.Stat(target); os.IsNotExist(err) {
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", m.Target, err)
		}
	}
	return nil
}

// special mounts /proc (of the container's own PID namespace), and a
// minimal /dev: a tmpfs with the usual device nodes bind-mounted from the
// host, /dev/shm, and the fd links.
func special(root string) error {
	proc := filepath.Join(root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		t := filepath.Join(dev, n)
		f, err := os.OpenFile(t, os.O_CREATE, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := unix.Mount("/dev/"+n, t, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("/dev/%s: %w", n, err)
		}
	}
	shm := filepath.Join(dev, "shm")
	if err := os.MkdirAll(shm, 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("shm", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mounting /dev/shm: %w", err)
	}
	for link, to := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(to, filepath.Join(dev, link)); err != nil {
			return err
		}
	}
	return nil
}

// pivot makes root the process's root and drops the old one.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return err
	}
	// pivot_root(".", "."): the old root ends up under the new one, on
	// the same mount point, and is detached at once (no directory for it
	// needed in a possibly read-only root).
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into %s: %w", root, err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	return unix.Chdir("/")
}

// credentials drops to the container's capabilities, no_new_privs, groups
// and user, in that order (capabilities can only be dropped while still
// root).
func credentials(s Spec) error {
	keep := map[uintptr]bool{}
	for _, c := range s.Capabilities {
		n, ok := capNumbers[strings.TrimPrefix(strings.ToUpper(c), "CAP_")]
		if !ok {
			return fmt.Errorf("unknown capability %q", c)
		}
		keep[n] = true
	}
	last := lastCap()
	for c := uintptr(0); c <= last; c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("dropping capability %d: %w", c, err)
		}
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	groups := make([]int, len(s.Groups))
	for i, g := range s.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("groups %v: %w", s.Groups, err)
	}
	if err := syscall.Setgid(int(s.GID)); err != nil {
		return fmt.Errorf("gid %d: %w", s.GID, err)
	}
	if err := syscall.Setuid(int(s.UID)); err != nil {
		return fmt.Errorf("uid %d: %w", s.UID, err)
	}
	if s.UID == 0 {
		// Root keeps only the capabilities asked for.
		var mask uint64
		for c := range keep {
			mask |= 1 << c
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := [2]unix.CapUserData{
			{Effective: uint32(mask), Permitted: uint32(mask)},
			{Effective: uint32(mask >> 32), Permitted: uint32(mask >> 32)},
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return fmt.Errorf("capabilities: %w", err)
		}
	}
	// Changing the user clears the parent-death signal: ask again, so the
	// container dies with the node.
	return unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
}

func lastCap() uintptr {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 40
	}
	var n uintptr
	_, _ = fmt.Sscan(strings.TrimSpace(string(b)), &n)
	return n
}

// lookPath finds the program in the container's root by its PATH.
func lookPath(prog string, env []string) (string, error) {
	if strings.Contains(prog, "/") {
		return prog, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, prog)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &exec.Error{Name: prog, Err: exec.ErrNotFound}
}

// capNumbers are the Linux capabilities by name.
var capNumbers = map[string]uintptr{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
	"SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
	"IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
	"SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27,
	"LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34,
	"WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

// DefaultCapabilities are what a container gets unless its security
// context adds or drops (the container runtimes' default set).
var DefaultCapabilities = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// KnownCapability reports whether name is a capability this node knows.
func KnownCapability(name string) bool {
	_, ok := capNumbers[strings.TrimPrefix(strings.ToUpper(name), "CAP_")]
	return ok
}
