// Package dockerbeside runs a Docker container of someone else's, as a
// workstation has them, beside what a test brings up (the local cluster,
// kind): from an image imported here (Debian's static busybox from the
// tools cache; nothing can be pulled), sleeping until removed. The test
// then checks it still runs and answers docker exec.
package dockerbeside

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Container is the container beside.
type Container struct {
	Host  string // DOCKER_HOST ("" for Docker's default)
	Name  string
	Image string
}

// Docker runs the docker CLI against c.Host.
func (c Container) Docker(args ...string) (string, error) {
	cmd := exec.Command("docker", args...)
	if c.Host != "" {
		cmd.Env = append(os.Environ(), "DOCKER_HOST="+c.Host)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Start imports busybox (the binary at path) as c.Image and runs c.Name
// from it.
func (c Container) Start(busybox string) error {
	root, err := os.MkdirTemp("", "docker-beside-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return err
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755); err != nil {
		return err
	}
	tarball := filepath.Join(root, "image.tar")
	if out, err := exec.Command("tar", "-C", root, "-cf", tarball, "bin").CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %v: %s", err, out)
	}
	_, _ = c.Docker("rm", "-f", c.Name)
	if out, err := c.Docker("import", tarball, c.Image); err != nil {
		return fmt.Errorf("docker import: %v: %s", err, out)
	}
	if out, err := c.Docker("run", "-d", "--name", c.Name, c.Image, "/bin/busybox", "sleep", "1000000"); err != nil {
		return fmt.Errorf("docker run: %v: %s", err, out)
	}
	return nil
}

// Check says what of the container is not as started: running, and
// answering docker exec.
func (c Container) Check() []string {
	var out []string
	if running, err := c.Docker("inspect", "-f", "{{.State.Running}}", c.Name); err != nil || running != "true" {
		out = append(out, fmt.Sprintf("the Docker container %s no longer runs: %v %s", c.Name, err, running))
	}
	if o, err := c.Docker("exec", c.Name, "/bin/busybox", "echo", "answers"); err != nil || o != "answers" {
		out = append(out, fmt.Sprintf("docker exec %s: %v %s", c.Name, err, o))
	}
	return out
}

// Remove removes the container and its image.
func (c Container) Remove() {
	_, _ = c.Docker("rm", "-f", c.Name)
	_, _ = c.Docker("rmi", c.Image)
}
