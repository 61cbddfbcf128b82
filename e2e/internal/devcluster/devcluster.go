// Package devcluster brings the whole local Kubernetes up and down: the
// pod network, the control plane, the process node, and the addons
// (metrics-server) applied from manifests.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/controlplane"
	"github.com/purchase-system/purchase-system/e2e/internal/daemon"
	"github.com/purchase-system/purchase-system/e2e/internal/podnet"
)

// NodeName is the one node of the dev cluster.
const NodeName = "process-node"

// Config is what the cluster is made of.
type Config struct {
	StateDir string // everything the cluster writes; the kubeconfig is StateDir/kubeconfig
	Bin      controlplane.Binaries
	Kubectl  string
	Self     string // this program, run again as the node daemon and the pod-exec helper
	// ImageStore is the directory of the node's image store.
	ImageStore    string
	HPASyncPeriod time.Duration
	Addons        []string // kustomize directories applied once the node is ready
}

func (c Config) controlPlane() controlplane.Config {
	return controlplane.Config{Dir: c.StateDir, Bin: c.Bin, HPASyncPeriod: c.HPASyncPeriod, NodeName: NodeName}
}

// Kubeconfig is the admin kubeconfig.
func (c Config) Kubeconfig() string { return c.controlPlane().AdminKubeconfig() }

// NodeArgs is the node daemon's command line.
func (c Config) NodeArgs() []string {
	cp := c.controlPlane()
	args := []string{"node",
		"--name=" + NodeName,
		"--kubeconfig=" + cp.Kubeconfig("node"),
		"--proxy-kubeconfig=" + cp.Kubeconfig("proxy"),
		"--ca=" + cp.CAFile(),
		"--serving-cert=" + filepath.Join(c.StateDir, "pki", "kubelet.crt"),
		"--serving-key=" + filepath.Join(c.StateDir, "pki", "kubelet.key"),
		"--state=" + filepath.Join(c.StateDir, "node"),
	}
	return append(args, "--image-store="+c.ImageStore)
}

// Up starts whatever is not running and waits until the node is Ready.
func Up(ctx context.Context, c Config, out io.Writer) error {
	start := time.Now()
	if err := podnet.CheckPrivileges(); err != nil {
		return err
	}
	if err := podnet.SetUpHost(); err != nil {
		return fmt.Errorf("setting up the pod network: %w", err)
	}
	cp := c.controlPlane()
	if err := controlplane.Up(ctx, cp, out, controlplane.NodeIdentity(NodeName), controlplane.ProxyIdentity); err != nil {
		return err
	}
	cs, err := adminClient(c.Kubeconfig())
	if err != nil {
		return err
	}
	if err := grantNode(ctx, cs); err != nil {
		return fmt.Errorf("granting the node its permissions: %w", err)
	}
	if _, running := cp.Daemons().Running(NodeName); !running {
		fmt.Fprintf(out, "==> starting the process node\n")
		if _, err := cp.Daemons().Start(daemonSpec(c)); err != nil {
			return err
		}
	}
	if err := waitNodeReady(ctx, cs, 90*time.Second, func() bool { _, ok := cp.Daemons().Running(NodeName); return ok }); err != nil {
		return fmt.Errorf("%w (log: %s)", err, cp.Daemons().LogFile(NodeName))
	}
	fmt.Fprintf(out, "==> node %s Ready\n", NodeName)
	if err := waitServiceAccount(ctx, cs, "default", 60*time.Second); err != nil {
		return err
	}
	for _, dir := range c.Addons {
		fmt.Fprintf(out, "==> applying %s\n", dir)
		cmd := exec.CommandContext(ctx, c.Kubectl, "--kubeconfig", c.Kubeconfig(), "apply", "-k", dir)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kubectl apply -k %s: %v\n%s", dir, err, b)
		}
	}
	fmt.Fprintf(out, "==> cluster up in %.1fs; kubeconfig: %s\n", time.Since(start).Seconds(), c.Kubeconfig())
	return nil
}

// Down stops everything Up started and removes its files and network.
func Down(c Config, out io.Writer) error {
	cp := c.controlPlane()
	var errs []error
	if _, ok := cp.Daemons().Running(NodeName); ok {
		fmt.Fprintf(out, "==> stopping the process node and its pods\n")
	}
	// The node stops its pods (SIGTERM, grace period, SIGKILL) first.
	errs = append(errs, cp.Daemons().Stop(NodeName, 60*time.Second))
	fmt.Fprintf(out, "==> stopping the control plane\n")
	errs = append(errs, controlplane.Down(cp))
	errs = append(errs, podnet.TearDownHost())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.RemoveAll(c.StateDir); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> cluster down\n")
	return nil
}

func daemonSpec(c Config) daemon.Spec {
	return daemon.Spec{Name: NodeName, Path: c.Self, Args: c.NodeArgs()}
}

func adminClient(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// grantNode lets the node read what virtual-kubelet watches cluster-wide
// (Secrets, ConfigMaps, Services) and mint service account tokens for its
// pods; the Node authorizer covers the rest of a kubelet's needs.
func grantNode(ctx context.Context, cs kubernetes.Interface) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "devcluster:process-node"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets", "configmaps", "services"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "devcluster:process-node"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "system:node:" + NodeName}},
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

func waitNodeReady(ctx context.Context, cs kubernetes.Interface, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	last := "not registered"
	for time.Now().Before(deadline) {
		if !alive() {
			return errors.New("the process node exited during start")
		}
		n, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = "Ready=" + string(c.Status) + " " + c.Message
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("node %s not Ready within %s: %s", NodeName, timeout, last)
}

// waitServiceAccount waits for the controller-manager to create a
// namespace's default ServiceAccount: pods cannot be created before it.
func waitServiceAccount(ctx context.Context, cs kubernetes.Interface, ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("service account %s/default not created within %s: is kube-controller-manager running?", ns, timeout)
}
