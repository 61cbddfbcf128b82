// Package clustertest runs against the dev cluster: a real kube-apiserver,
// controller-manager and scheduler, the upstream node (kubelet,
// containerd, runc, kube-proxy, kube-router), CoreDNS, metrics-server,
// and Kafka, PostgreSQL and Prometheus on the host. TestMain brings the cluster up (from the tools
// cache, in seconds) and, if it started it, takes it down at the end and
// checks that nothing is left behind.
package clustertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/hoststate"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

var (
	repoRoot   string
	kubeconfig string
	kubectlBin string
	client     *kubernetes.Clientset
)

// Addresses of the host services the cluster's pods use.
const (
	hostKafka     = "10.88.0.1:9092"
	prometheusURL = "http://10.88.0.1:9090"
)

// systemOverlay is the system as the cluster tests deploy it: the local
// overlay's services with Kafka, PostgreSQL and Prometheus on the host
// (scripts/infra.sh), so a test can create topics, read tables and query
// Prometheus directly. make run and the scenario run those as pods
// (manifests/overlays/local).
const systemOverlay = "e2e/clustertest/testdata/host-infra"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if repoRoot, err = testproc.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Geteuid() != 0 {
		if realdeps.Required() {
			fmt.Fprintln(os.Stderr, "clustertest: the dev cluster needs root (a network namespace per pod)")
			return 1
		}
		fmt.Println("clustertest: skipped: the dev cluster needs root (a network namespace per pod); make test runs it as root")
		return 0
	}
	kubeconfig = filepath.Join(repoRoot, ".cache", "devcluster", "kubeconfig")
	// kubectl's cache in the checkout's state, as scripts/lib.sh sets it
	// for make test, also when the package runs on its own.
	if os.Getenv("KUBECACHEDIR") == "" {
		os.Setenv("KUBECACHEDIR", filepath.Join(repoRoot, ".cache", "kubectl"))
	}
	_, statErr := os.Stat(kubeconfig)
	startedHere := statErr != nil
	if !startedHere {
		fmt.Println("clustertest: the cluster was already up before the tests: leaving it running (the host checks are not run)")
		return runTests(m)
	}
	return runOnAHostShared(m)
}

// runOnAHostShared runs the tests on a cluster brought up on a host that
// holds what a workstation does (setUpBeside: Docker running a container,
// foreign files in the shared directories, a foreign process named like a
// shim), and checks what down gives back: the host exactly as before up
// (hoststate), with all of that still there. Along the way: a down with
// no cluster changes nothing; the cluster killed with SIGKILL comes back
// up and still goes down cleanly; an up interrupted halfway is cleaned by
// the next down.
func runOnAHostShared(m *testing.M) int {
	b, err := setUpBeside()
	defer b.tearDown()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: setting up Docker and the planted files beside the cluster:", err)
		return 1
	}
	before := hoststate.Take()
	code := 0
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
		code = 1
	}
	// No cluster is up: down has nothing of its own to give back.
	if err := script("cluster.sh", "down"); err != nil {
		fail("cluster down with no cluster up: %v", err)
	}
	if d := hoststate.Diff(before, hoststate.Take()); len(d) > 0 {
		fail("cluster down with no cluster up changed the host:\n  %s", strings.Join(d, "\n  "))
	}
	if c := runTests(m); c != 0 {
		code = c
	}
	// up on a running cluster starts nothing and succeeds (its own
	// listeners are no conflict).
	if err := script("cluster.sh", "up"); err != nil {
		fail("cluster up on the running cluster: %v", err)
	}

	// A machine whose cluster was killed (SIGKILL to every process of it,
	// containers and shims included, as an OOM killer or a crash would):
	// cluster up must bring it back, and down must still leave nothing.
	if n := killCluster(); n == 0 {
		fail("found no process of the cluster to kill")
	} else {
		fmt.Printf("clustertest: killed %d processes of the cluster with SIGKILL; starting it again\n", n)
	}
	if err := script("cluster.sh", "up"); err != nil {
		fail("cluster up after SIGKILL: %v", err)
	}
	// The cluster first: its pods drain while Kafka is still there.
	if err := script("cluster.sh", "down"); err != nil {
		fail("%v", err)
	}
	if err := script("infra.sh", "down"); err != nil {
		fail("%v", err)
	}
	if left := leftovers(); len(left) > 0 {
		fail("cluster down left things behind:\n  %s", strings.Join(left, "\n  "))
	}
	if d := hoststate.Diff(before, hoststate.Take()); len(d) > 0 {
		fail("the host after cluster down is not as it was before up:\n  %s", strings.Join(d, "\n  "))
	} else {
		fmt.Println("clustertest: after cluster down the host is as it was before up: links, routes, chains, rules and policies, ipsets, sysctls, mounts, cgroups, shared directories")
	}
	if err := interruptedUp(); err != nil {
		fail("%v", err)
	}
	if err := script("cluster.sh", "down"); err != nil {
		fail("cluster down after an interrupted up: %v", err)
	}
	if d := hoststate.Diff(before, hoststate.Take()); len(d) > 0 {
		fail("an interrupted up, then down, left the host changed:\n  %s", strings.Join(d, "\n  "))
	} else {
		fmt.Println("clustertest: an up killed halfway was given back by the next down")
	}
	if bad := b.check(); len(bad) > 0 {
		fail("what ran beside the cluster did not survive it:\n  %s", strings.Join(bad, "\n  "))
	} else {
		fmt.Println("clustertest: the Docker container still runs and answers docker exec; the planted process and files are all there")
	}
	return code
}

// runTests brings the cluster and the host services up and runs the
// tests.
func runTests(m *testing.M) int {
	if err := script("cluster.sh", "up"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := script("infra.sh", "up"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out, err := exec.Command(filepath.Join(repoRoot, "scripts", "tools.sh"), "path", "kubernetes").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tools.sh path kubernetes:", err)
		return 1
	}
	kubectlBin = filepath.Join(strings.TrimSpace(string(out)), "kubectl")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	client = kubernetes.NewForConfigOrDie(cfg)
	return m.Run()
}

// interruptedUp starts cluster up and kills it (the launcher, not the
// daemons it started) once the node's containerd has been started: what
// it took so far is in the ledger, and the next down gives it back.
func interruptedUp() error {
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "cluster.sh"), "up")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ledgerFile := filepath.Join(repoRoot, ".cache", "devcluster", "host-ledger.jsonl")
	deadline := time.After(10 * time.Minute)
	for {
		if b, _ := os.ReadFile(ledgerFile); strings.Contains(string(b), `"kind":"process","name":"containerd"`) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			fmt.Println("clustertest: killed cluster up once it had started the node's containerd")
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("cluster up ended (%v) before it started the node's containerd", err)
		case <-deadline:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			return fmt.Errorf("cluster up did not reach the node's containerd within 10 min")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func script(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot, "scripts", name), args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("scripts/%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// kubectl runs the cluster's kubectl and returns its combined output.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// execKubectl is kubectl for polling: the error is returned, not fatal.
func execKubectl(args ...string) (string, error) {
	out, err := exec.Command(kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}
