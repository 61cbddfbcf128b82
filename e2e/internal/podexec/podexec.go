// Package podexec is the last step of starting a container on the process
// node: already inside the pod's network and mount namespaces (ip netns
// exec put it there), it bind-mounts the pod's volumes at their mount
// paths and replaces itself with the container's program, which so keeps
// this process's pid, parent and signals.
package podexec

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mount is one bind mount: "source:target" or "source:target:ro".
type Mount struct {
	Source, Target string
	ReadOnly       bool
}

// ParseMount parses the --mount flag's value.
func ParseMount(s string) (Mount, error) {
	parts := strings.Split(s, ":")
	m := Mount{}
	switch {
	case len(parts) == 2:
		m.Source, m.Target = parts[0], parts[1]
	case len(parts) == 3 && parts[2] == "ro":
		m.Source, m.Target, m.ReadOnly = parts[0], parts[1], true
	default:
		return Mount{}, fmt.Errorf("mount %q is not source:target[:ro]", s)
	}
	if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
		return Mount{}, fmt.Errorf("mount %q: paths must be absolute", s)
	}
	return m, nil
}

// Exec mounts and then executes argv; it returns only on failure.
func Exec(mounts []Mount, argv []string) error {
	if len(argv) == 0 {
		return errors.New("pod-exec: no program given")
	}
	// Open every source before mounting anything: a mount can hide the
	// source of a later one (an emptyDir on /tmp hides a pod directory
	// under /tmp), and a descriptor still reaches what it opened.
	fds := make([]int, len(mounts))
	for i, m := range mounts {
		fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount source %s: %w", m.Source, err)
		}
		fds[i] = fd
	}
	for i, m := range mounts {
		if err := bind(m, fds[i]); err != nil {
			return err
		}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(path, argv, os.Environ())
}

func bind(m Mount, fd int) error {
	src := fmt.Sprintf("/proc/self/fd/%d", fd)
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("mount source %s: %w", m.Source, err)
	}
	// The target must exist to be mounted over. It is created on the host's
	// filesystem (an empty directory or file), visible outside the pod but
	// harmless; what is mounted on it is visible only inside.
	if st.IsDir() {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return err
		}
	} else if _, err := os.Stat(m.Target); os.IsNotExist(err) {
		if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(m.Target, os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := syscall.Mount(src, m.Target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := syscall.Mount("", m.Target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", m.Target, err)
		}
	}
	return nil
}
