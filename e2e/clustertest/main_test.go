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
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

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

	code := m.Run()

	if !startedHere {
		fmt.Println("clustertest: the cluster was already up before the tests: leaving it running (down check not run)")
		return code
	}
	// A machine whose cluster was killed (SIGKILL to every process of it,
	// containers and shims included, as an OOM killer or a crash would):
	// cluster up must bring it back, and down must still leave nothing.
	if n := killCluster(); n == 0 {
		fmt.Fprintln(os.Stderr, "FAIL: found no process of the cluster to kill")
		code = 1
	} else {
		fmt.Printf("clustertest: killed %d processes of the cluster with SIGKILL; starting it again\n", n)
	}
	if err := script("cluster.sh", "up"); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cluster up after SIGKILL:", err)
		code = 1
	}
	// The cluster first: its pods drain while Kafka is still there.
	if err := script("cluster.sh", "down"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if err := script("infra.sh", "down"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: cluster down left things behind:\n  %s\n", strings.Join(left, "\n  "))
		code = 1
	} else {
		fmt.Println("clustertest: cluster down left no process, port, namespace or file behind")
	}
	return code
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
