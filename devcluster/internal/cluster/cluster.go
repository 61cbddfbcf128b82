// Package cluster brings the whole local Kubernetes up and down: the
// control plane (controlplane), the node (package node: kubelet, containerd,
// runc, CNI, kube-proxy, kube-router) and the addons (CoreDNS,
// metrics-server, kube-state-metrics) applied from manifests.
package cluster

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

	"github.com/purchase-system/purchase-system/devcluster/internal/controlplane"
	"github.com/purchase-system/purchase-system/devcluster/node"
	"github.com/purchase-system/purchase-system/images/oci"
)

// NodeName is the one node of the dev cluster.
const NodeName = "devcluster-node"

// Config is what the cluster is made of.
type Config struct {
	StateDir      string // everything the cluster writes; the kubeconfig is StateDir/kubeconfig
	Bin           controlplane.Binaries
	Kubectl       string
	HPASyncPeriod time.Duration
	// ControllerManagerArgs are added to kube-controller-manager's flags.
	ControllerManagerArgs []string
	Addons                []string // kustomize directories applied once the node is ready

	NodeBin     node.Binaries
	ImageDir    string // containerd's root (images, snapshots): kept across down
	RegistryDir string // the local registry's storage: kept across down
	// Images are archives (or directories of them) pushed to the local
	// registry at start, before anything runs; the node pulls them from
	// there.
	Images []string
	// ImagePins is where a kustomize Component pinning every pushed image
	// by digest is written, for the addons and overlays to include.
	ImagePins string
}

func (c Config) controlPlane() controlplane.Config {
	return controlplane.Config{Dir: c.StateDir, Bin: c.Bin, HPASyncPeriod: c.HPASyncPeriod, NodeName: NodeName, ControllerManagerArgs: c.ControllerManagerArgs}
}

// Kubeconfig is the admin kubeconfig.
func (c Config) Kubeconfig() string { return c.controlPlane().AdminKubeconfig() }

// Node is the node's configuration.
func (c Config) Node() node.Config {
	cp := c.controlPlane()
	return node.Config{
		Name: NodeName, Dir: filepath.Join(c.StateDir, "node"), ImageDir: c.ImageDir, RegistryDir: c.RegistryDir, Bin: c.NodeBin,
		CAFile:      cp.CAFile(),
		ServingCert: filepath.Join(c.StateDir, "pki", "kubelet.crt"), ServingKey: filepath.Join(c.StateDir, "pki", "kubelet.key"),
		KubeletConfig: cp.Kubeconfig("node"), ProxyConfig: cp.Kubeconfig("proxy"), KubeRouterConfig: cp.Kubeconfig("kube-router"),
	}
}

// Up starts whatever is not running and waits until the node is Ready.
func Up(ctx context.Context, c Config, out io.Writer) error {
	start := time.Now()
	n := c.Node()
	if err := node.CheckHost(n.Bin); err != nil {
		return err
	}
	if err := node.SetUpHost(n.Dir); err != nil {
		return fmt.Errorf("setting up the host network: %w", err)
	}
	cp := c.controlPlane()
	if err := controlplane.Up(ctx, cp, out, controlplane.NodeIdentity(NodeName), controlplane.ProxyIdentity, controlplane.KubeRouterIdentity); err != nil {
		return err
	}
	cs, err := adminClient(c.Kubeconfig())
	if err != nil {
		return err
	}
	if err := grantKubeRouter(ctx, cs); err != nil {
		return fmt.Errorf("granting kube-router its permissions: %w", err)
	}
	if err := node.Up(ctx, n, out); err != nil {
		return err
	}
	if err := pushImages(ctx, c, out); err != nil {
		return err
	}
	if err := waitNodeReady(ctx, cs, NodeName, 90*time.Second, func() bool { _, ok := n.Daemons().Running(node.Kubelet); return ok }); err != nil {
		return fmt.Errorf("%w (log: %s)", err, n.Daemons().LogFile(node.Kubelet))
	}
	fmt.Fprintf(out, "==> node %s Ready\n", NodeName)
	if err := waitServiceAccount(ctx, cs, "default", 60*time.Second); err != nil {
		return err
	}
	if err := applyAddons(ctx, c, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> cluster up in %.1fs; kubeconfig: %s\n", time.Since(start).Seconds(), c.Kubeconfig())
	return nil
}

// pushImages puts the images into the local registry, under their own
// names (containerd's mirror asks for them so), and pins them by digest.
func pushImages(ctx context.Context, c Config, out io.Writer) error {
	archives := oci.Archives(c.Images...)
	if len(archives) == 0 {
		return nil
	}
	start := time.Now()
	pushed, err := oci.PushArchives(ctx, archives, oci.Mirror(node.LocalRegistry))
	if err != nil {
		return fmt.Errorf("pushing images to the local registry: %w", err)
	}
	if c.ImagePins != "" {
		if err := oci.WritePins(c.ImagePins, pushed, true); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "==> %d images in the local registry %s (%.1fs), pinned by digest in %s\n", len(pushed), node.LocalRegistry, time.Since(start).Seconds(), c.ImagePins)
	return nil
}

func applyAddons(ctx context.Context, c Config, out io.Writer) error {
	for _, dir := range c.Addons {
		fmt.Fprintf(out, "==> applying %s\n", dir)
		cmd := exec.CommandContext(ctx, c.Kubectl, "--kubeconfig", c.Kubeconfig(), "apply", "-k", dir)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kubectl apply -k %s: %v\n%s", dir, err, b)
		}
	}
	return nil
}

// Down stops the node (its pods get their grace), then the control plane,
// and removes the cluster's state; containerd's image store stays.
func Down(c Config, out io.Writer) error {
	n := c.Node()
	fmt.Fprintf(out, "==> stopping the node and its pods\n")
	errs := []error{node.Down(n, 30*time.Second, out)}
	fmt.Fprintf(out, "==> stopping the control plane\n")
	errs = append(errs, controlplane.Down(c.controlPlane()))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.RemoveAll(c.StateDir); err != nil {
		return err
	}
	fmt.Fprintf(out, "==> cluster down\n")
	return nil
}

// grantKubeRouter lets kube-router's firewall read what it enforces.
func grantKubeRouter(ctx context.Context, cs kubernetes.Interface) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "devcluster:kube-router"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"namespaces", "pods", "services", "nodes", "endpoints"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
		},
	}
	return ensureClusterRole(ctx, cs, role, rbacv1.Subject{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: controlplane.KubeRouterIdentity.User})
}

func ensureClusterRole(ctx context.Context, cs kubernetes.Interface, role *rbacv1.ClusterRole, subject rbacv1.Subject) error {
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{subject},
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

func adminClient(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func waitNodeReady(ctx context.Context, cs kubernetes.Interface, name string, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	last := "not registered"
	for time.Now().Before(deadline) {
		if !alive() {
			return errors.New("the node exited during start")
		}
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
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
	return fmt.Errorf("node %s not Ready within %s: %s", name, timeout, last)
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
