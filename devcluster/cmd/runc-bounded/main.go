// Command runc-bounded is the OCI runtime dockerd uses on a machine whose
// capability bounding set lacks capabilities Docker gives every
// privileged container (this project's VMs lack CAP_SYS_RESOURCE, and
// Docker 20.10 asks for all of them, --cap-drop or not): runc then fails
// with "unable to apply caps: operation not permitted". It removes from
// the container's (or exec'd process's) capability sets what the bounding
// set does not hold, and runs runc.
//
//	dockerd --add-runtime project-runc=/path/runc-bounded ...
//	(daemon.json runtimeArgs ["--runc=/usr/sbin/runc"] names the runc to run)
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	args := os.Args[1:]
	runc := "/usr/sbin/runc"
	if len(args) > 0 && strings.HasPrefix(args[0], "--runc=") {
		runc, args = strings.TrimPrefix(args[0], "--runc="), args[1:]
	}
	if spec := specFile(args); spec != "" {
		have, err := boundingSet()
		if err == nil {
			err = bound(spec, have)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "runc-bounded:", err)
			os.Exit(1)
		}
	}
	if err := syscall.Exec(runc, append([]string{runc}, args...), os.Environ()); err != nil {
		fmt.Fprintln(os.Stderr, "runc-bounded: running", runc+":", err)
		os.Exit(1)
	}
}

// specFile is the JSON file whose capabilities runc will apply: the
// bundle's config.json (create, run) or an exec's process file.
func specFile(args []string) string {
	cmd := ""
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			if cmd == "" {
				cmd = a
			}
			continue
		}
		name, value, hasValue := strings.Cut(a, "=")
		take := func() string {
			if hasValue {
				return value
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch {
		case cmd == "" && slices.Contains([]string{"--root", "--log", "--log-format", "--criu", "--rootless"}, name):
			take()
		case (cmd == "create" || cmd == "run") && (name == "--bundle" || name == "-b"):
			return filepath.Join(take(), "config.json")
		case cmd == "exec" && (name == "--process" || name == "-p"):
			return take()
		}
	}
	if cmd == "create" || cmd == "run" {
		return "config.json" // runc's default bundle is the working directory
	}
	return ""
}

// bound rewrites file so that no capability set names a capability the
// bounding set (have) lacks.
func bound(file string, have map[string]bool) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	proc := doc
	if p, ok := doc["process"].(map[string]any); ok {
		proc = p // a bundle's config.json; an exec's file is the process itself
	}
	caps, ok := proc["capabilities"].(map[string]any)
	if !ok {
		return nil
	}
	changed := false
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := list[:0:0]
		for _, c := range list {
			if name, ok := c.(string); ok && !have[name] {
				changed = true
				continue
			}
			kept = append(kept, c)
		}
		caps[set] = kept
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(file, out, 0o600)
}

// boundingSet is the capabilities this process's bounding set holds, by
// name.
func boundingSet() (map[string]bool, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, err
			}
			have := map[string]bool{}
			for i, name := range capNames {
				if mask&(1<<i) != 0 {
					have[name] = true
				}
			}
			return have, nil
		}
	}
	return nil, fmt.Errorf("no CapBnd in /proc/self/status")
}

// capNames by number (linux/capability.h).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
	"CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
	"CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}
