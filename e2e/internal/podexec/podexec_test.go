package podexec_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// probe is the container's program: a static binary that reports what it
// sees from inside.
const probe = `package main

import (
	"encoding/json"
	"os"
	"strings"
	"syscall"
)

func main() {
	r := map[string]any{"uid": os.Getuid(), "gid": os.Getgid(), "pid": os.Getpid()}
	r["hostname"], _ = os.Hostname()
	r["cwd"], _ = os.Getwd()
	groups, _ := os.Getgroups()
	r["groups"] = groups
	if err := os.WriteFile("/written", []byte("x"), 0o644); err != nil {
		r["root_write"] = err.Error()
	} else {
		r["root_write"] = "ok"
	}
	if err := os.WriteFile("/data/written", []byte("x"), 0o644); err != nil {
		r["volume_write"] = err.Error()
	} else {
		r["volume_write"] = "ok"
	}
	b, err := os.ReadFile("/var/run/secrets/token")
	r["secret"] = string(b)
	if err != nil {
		r["secret"] = err.Error()
	}
	hosts, _ := os.ReadFile("/etc/hosts")
	r["hosts"] = string(hosts)
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		for _, k := range []string{"NoNewPrivs", "CapEff", "CapBnd", "CapPrm"} {
			if strings.HasPrefix(l, k+":") {
				r[k] = strings.TrimSpace(strings.TrimPrefix(l, k+":"))
			}
		}
	}
	var st syscall.Statfs_t
	_ = syscall.Statfs("/dev/null", &st)
	_, err = os.Stat("/dev/null")
	r["dev_null"] = err == nil
	r["env"] = os.Getenv("GREETING")
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if e.IsDir() && e.Name()[0] >= '0' && e.Name()[0] <= '9' {
			n++
		}
	}
	r["processes"] = n
	_ = json.NewEncoder(os.Stdout).Encode(r)
}
`

// buildProbe builds the probe statically into an image root.
func buildProbe(t *testing.T, rootfs string) {
	t.Helper()
	src := t.TempDir()
	_ = os.WriteFile(filepath.Join(src, "go.mod"), []byte("module probe\n\ngo 1.26\n"), 0o644)
	_ = os.WriteFile(filepath.Join(src, "main.go"), []byte(probe), 0o644)
	out := filepath.Join(rootfs, "usr", "local", "bin", "probe")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, b)
	}
	_ = os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755)
}

// TestContainerRunsInItsOwnRoot starts the probe as the node starts a
// container: from the image's root under a writable layer, in new mount,
// PID and UTS namespaces, with volumes, a read-only root, a non-root user,
// no_new_privs and no capabilities.
func TestContainerRunsInItsOwnRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		realdeps.Missing(t, "needs root for namespaces and mounts (make test runs as root)")
	}
	base := t.TempDir()
	image := filepath.Join(base, "image")
	buildProbe(t, image)
	data, secrets := filepath.Join(base, "pod", "data"), filepath.Join(base, "pod", "secrets")
	for _, d := range []string{data, secrets} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(data, 0o777)
	_ = os.WriteFile(filepath.Join(secrets, "token"), []byte("t0ken"), 0o644)
	hosts := filepath.Join(base, "hosts")
	_ = os.WriteFile(hosts, []byte("10.96.0.7 kafka\n"), 0o644)
	c := filepath.Join(base, "container")
	spec := podexec.Spec{
		Rootfs: image, Upper: filepath.Join(c, "upper"), Work: filepath.Join(c, "work"), Root: filepath.Join(c, "root"),
		ReadOnlyRoot: true,
		Mounts: []podexec.Mount{
			{Source: data, Target: "/data"},
			{Source: secrets, Target: "/var/run/secrets", ReadOnly: true},
		},
		Files:    []podexec.Mount{{Source: hosts, Target: "/etc/hosts", ReadOnly: true}},
		Hostname: "web-1", UID: 65532, GID: 65532, Groups: []uint32{2000}, NoNewPrivs: true,
		WorkingDir: "/data", Argv: []string{"probe"}, Env: []string{"PATH=/usr/local/bin", "GREETING=hello"},
	}
	specFile := filepath.Join(base, "spec.json")
	b, _ := json.Marshal(spec)
	_ = os.WriteFile(specFile, b, 0o644)

	cmd := exec.Command(testproc.Binary(t, "devcluster"), "pod-exec", "--spec", specFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pod-exec: %v\n%s", err, out)
	}
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("probe output %q: %v", out, err)
	}
	t.Logf("seen from inside: %v", r)
	want := map[string]any{
		"uid": 65532.0, "gid": 65532.0, "pid": 1.0, "hostname": "web-1", "cwd": "/data", "volume_write": "ok",
		"secret": "t0ken", "hosts": "10.96.0.7 kafka\n", "NoNewPrivs": "1", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "dev_null": true, "env": "hello", "processes": 1.0,
	}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("%s = %v, want %v", k, r[k], v)
		}
	}
	if w, _ := r["root_write"].(string); !strings.Contains(w, "read-only file system") {
		t.Errorf("writing to the root: %q, want a read-only file system", w)
	}
	if g, _ := r["groups"].([]any); len(g) != 1 || g[0] != 2000.0 {
		t.Errorf("groups %v, want [2000]", r["groups"])
	}
	// Nothing leaked to the host: the volume got the write, the image did not.
	if _, err := os.Stat(filepath.Join(data, "written")); err != nil {
		t.Errorf("the volume's write is not on the host: %v", err)
	}
	if _, err := os.Stat(filepath.Join(image, "written")); err == nil {
		t.Error("the container wrote into the image's root")
	}
}

// A writable root keeps the container's writes in its own layer: the
// shared image root is untouched.
func TestAWritableRootWritesToTheContainersLayer(t *testing.T) {
	if os.Geteuid() != 0 {
		realdeps.Missing(t, "needs root for namespaces and mounts (make test runs as root)")
	}
	base := t.TempDir()
	image := filepath.Join(base, "image")
	buildProbe(t, image)
	devcluster := testproc.Binary(t, "devcluster")
	// Capabilities are a thread's, and a Go program has many threads: a
	// pod-exec that dropped them on one thread and executed the program
	// from another ran it with every capability, now and then (1 run in
	// many under make test). Many runs make that visible.
	for i := range 40 {
		c := filepath.Join(base, fmt.Sprintf("container-%d", i))
		spec := podexec.Spec{Rootfs: image, Upper: filepath.Join(c, "upper"), Work: filepath.Join(c, "work"), Root: filepath.Join(c, "root"),
			Capabilities: []string{"NET_BIND_SERVICE"}, Argv: []string{"/usr/local/bin/probe"}}
		specFile := filepath.Join(base, fmt.Sprintf("spec-%d.json", i))
		b, _ := json.Marshal(spec)
		_ = os.WriteFile(specFile, b, 0o644)
		cmd := exec.Command(devcluster, "pod-exec", "--spec", specFile)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("pod-exec: %v\n%s", err, out)
		}
		var r map[string]any
		_ = json.Unmarshal(out, &r)
		// Root (uid 0) with only NET_BIND_SERVICE (bit 10).
		if r["uid"] != 0.0 || r["root_write"] != "ok" || r["CapEff"] != "0000000000000400" || r["CapBnd"] != "0000000000000400" {
			t.Fatalf("run %d, seen from inside: %v", i, r)
		}
		if _, err := os.Stat(filepath.Join(c, "upper", "written")); err != nil {
			t.Errorf("the write is not in the container's layer: %v", err)
		}
		if _, err := os.Stat(filepath.Join(image, "written")); err == nil {
			t.Fatal("the container wrote into the image's root")
		}
	}
}
