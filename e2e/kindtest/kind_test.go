// Package kindtest runs the kind path as make test does (e2e/kind/run.sh
// lean: a kind cluster from the node image built here, the system, its
// NetworkPolicies and the lean scenario) beside a Docker container of
// someone else's, and checks that the host and Docker are as they were:
// every kernel setting a privileged node could change, the netfilter
// state, links, mounts and cgroups; the other container still runs; no
// kind container or volume is left; a dockerd the run started is stopped
// and what it changed given back.
//
//	go test ./e2e/kindtest -args -run-kind   (scripts/test.sh runs it after the local scenario)
package kindtest

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/e2e/internal/dockerbeside"
	"github.com/purchase-system/purchase-system/e2e/internal/hoststate"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

var runKind = flag.Bool("run-kind", false, "run e2e/kind/run.sh lean (Docker, a kind cluster, the lean scenario: several minutes)")

func TestKindPathLeavesTheHostAndDockerAsTheyWere(t *testing.T) {
	if !*runKind {
		t.Skip("the kind path takes minutes and a Docker daemon: scripts/test.sh passes -run-kind")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the kind path needs root (a Docker daemon, privileged containers)")
	}
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(root, args[0]), args[1:]...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := script("scripts/docker.sh", "install"); err != nil {
		t.Fatalf("docker.sh install: %v\n%s", err, out)
	}
	before := hoststate.Take()

	// Someone else's container, running before kind and after it.
	if out, err := script("scripts/docker.sh", "up"); err != nil {
		t.Fatalf("docker.sh up: %v\n%s", err, out)
	}
	host, err := script("scripts/docker.sh", "host")
	if err != nil {
		t.Fatalf("docker.sh host: %v\n%s", err, host)
	}
	busybox, err := script("scripts/tools.sh", "path", "busybox")
	if err != nil {
		t.Fatalf("tools.sh path busybox: %v\n%s", err, busybox)
	}
	c := dockerbeside.Container{Host: strings.TrimSpace(host), Name: "purchase-system-beside-kind", Image: "purchase-system/beside:test"}
	if err := c.Start(strings.TrimSpace(busybox)); err != nil {
		t.Fatal(err)
	}
	docker := c.Docker
	volumesBefore, _ := docker("volume", "ls", "-q")

	out, err := script("e2e/kind/run.sh", "lean")
	t.Logf("e2e/kind/run.sh lean:\n%s", lastLines(out, 60))
	if err != nil {
		t.Errorf("e2e/kind/run.sh lean: %v", err)
	}

	for _, bad := range c.Check() {
		t.Errorf("after kind: %s", bad)
	}
	if left, _ := docker("ps", "-a", "-q", "--filter", "label=io.x-k8s.kind.cluster"); left != "" {
		t.Errorf("kind containers left: %s", left)
	}
	volumesAfter, _ := docker("volume", "ls", "-q")
	for _, v := range strings.Fields(volumesAfter) {
		if !slices.Contains(strings.Fields(volumesBefore), v) {
			t.Errorf("a Docker volume was left: %s", v)
		}
	}
	c.Remove()
	if out, err := script("scripts/docker.sh", "down"); err != nil {
		t.Errorf("docker.sh down: %v\n%s", err, out)
	}
	if d := hoststate.Diff(before, hoststate.Take()); len(d) > 0 {
		t.Errorf("after kind and its dockerd, the host is not as it was:\n  %s", strings.Join(d, "\n  "))
	} else {
		t.Log("after kind and its dockerd the host is as it was: sysctls (" + strings.Join(hoststate.Sysctls, ", ") + "), netfilter, links, mounts, cgroups, shared directories")
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("… %d lines before", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
