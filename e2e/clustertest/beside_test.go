package clustertest

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/purchase-system/purchase-system/e2e/internal/dockerbeside"
)

// beside is what a workstation holds before the local cluster comes up,
// as the cluster tests set it: a Docker daemon running a container (its
// shims are containerd-shim-runc-v2, its chains DOCKER-*, its FORWARD
// policy DROP when it found forwarding off), another process named
// containerd-shim-runc-v2, and files in the shared directories the
// cluster's parts write to. None of it may stop the cluster, and all of
// it must be there, unchanged, after cluster down.
type beside struct {
	docker   dockerbeside.Container
	shim     *exec.Cmd
	files    map[string]string // path → content
	madeDirs []string          // directories made for the files, removed afterwards (deepest last)
}

// plantedFiles are foreign files where the cluster's parts write.
var plantedFiles = map[string]string{
	"/etc/cni/net.d/99-planted.conflist": `{"cniVersion": "1.0.0", "name": "planted", "plugins": []}` + "\n",
	"/var/lib/kubelet/planted":           "planted by the cluster tests\n",
}

// plantedIfPresent are planted only where their directory exists: the
// cluster may make it (libmount's /run/mount, by the kubelet's umount),
// and a plant would hide that it must go again at down.
var plantedIfPresent = map[string]string{
	"/run/mount/planted": "planted by the cluster tests\n",
}

func setUpBeside() (*beside, error) {
	files := maps.Clone(plantedFiles)
	for path, content := range plantedIfPresent {
		if _, err := os.Stat(filepath.Dir(path)); err == nil {
			files[path] = content
		}
	}
	b := &beside{docker: dockerbeside.Container{Name: "purchase-system-beside", Image: "purchase-system/beside:test"}, files: files}
	if err := script("docker.sh", "up"); err != nil {
		return b, err
	}
	host, err := exec.Command(filepath.Join(repoRoot, "scripts", "docker.sh"), "host").Output()
	if err != nil {
		return b, fmt.Errorf("scripts/docker.sh host: %w", err)
	}
	b.docker.Host = strings.TrimSpace(string(host))
	// An image imported here (nothing can be pulled): Debian's static
	// busybox, which the tools cache holds for the storage helper.
	busybox, err := exec.Command(filepath.Join(repoRoot, "scripts", "tools.sh"), "path", "busybox").Output()
	if err != nil {
		return b, err
	}
	if err := b.docker.Start(strings.TrimSpace(string(busybox))); err != nil {
		return b, err
	}
	// A process of someone else's named like the node's shims.
	dir, err := os.MkdirTemp("", "beside-shim-")
	if err != nil {
		return b, err
	}
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		return b, err
	}
	shim := filepath.Join(dir, "containerd-shim-runc-v2")
	if err := os.WriteFile(shim, sleep, 0o755); err != nil {
		return b, err
	}
	b.shim = exec.Command(shim, "1000000")
	b.shim.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := b.shim.Start(); err != nil {
		return b, err
	}
	for path, content := range b.files {
		for d := filepath.Dir(path); ; d = filepath.Dir(d) {
			if _, err := os.Stat(d); err == nil {
				break
			}
			b.madeDirs = append([]string{d}, b.madeDirs...)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return b, err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return b, err
		}
	}
	return b, nil
}

// check lists what of it is not as it was set up.
func (b *beside) check() []string {
	out := b.docker.Check()
	if b.shim != nil && b.shim.Process != nil && syscall.Kill(b.shim.Process.Pid, 0) != nil {
		out = append(out, fmt.Sprintf("the process named containerd-shim-runc-v2 (pid %d) was killed", b.shim.Process.Pid))
	}
	for path, content := range b.files {
		if got, err := os.ReadFile(path); err != nil || string(got) != content {
			out = append(out, fmt.Sprintf("%s: %v (content %q)", path, err, got))
		}
	}
	return out
}

// tearDown removes what setUpBeside made and stops the dockerd only if
// this checkout started it.
func (b *beside) tearDown() {
	b.docker.Remove()
	if b.shim != nil && b.shim.Process != nil {
		_ = b.shim.Process.Kill()
		_ = b.shim.Wait()
		_ = os.RemoveAll(filepath.Dir(b.shim.Path))
	}
	for path := range b.files {
		_ = os.Remove(path)
	}
	for i := len(b.madeDirs) - 1; i >= 0; i-- {
		_ = os.Remove(b.madeDirs[i])
	}
	if err := script("docker.sh", "down"); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}
