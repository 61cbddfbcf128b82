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
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/devcluster/internal/controlplane"
	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
	"github.com/purchase-system/purchase-system/devcluster/internal/take"
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
	// PinFiles are SRC=DST pairs: DST is SRC with every image it names
	// pinned by the pushed digest (pod templates inside ConfigMaps, which
	// ImagePins does not reach), written before the addons are applied.
	PinFiles []string
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
		RegistryTLS: cp.RegistryTLS(),
		CAFile:      cp.CAFile(),
		ServingCert: filepath.Join(c.StateDir, "pki", "kubelet.crt"), ServingKey: filepath.Join(c.StateDir, "pki", "kubelet.key"),
		KubeletConfig: cp.Kubeconfig("node"), ProxyConfig: cp.Kubeconfig("proxy"), KubeRouterConfig: cp.Kubeconfig("kube-router"),
	}
}

// LedgerPath is the cluster's record of what it took from the host.
func (c Config) LedgerPath() string { return filepath.Join(c.StateDir, "host-ledger.jsonl") }

// Conflicts names everything on this host the cluster would collide with:
// what the node checks, the ports of every component not running yet, and
// what an earlier version of the launcher left without a record.
func Conflicts(c Config, led *ledger.Ledger) []node.Conflict {
	var out []node.Conflict
	if len(led.Entries()) == 0 {
		out = append(out, node.Legacy(c.StateDir, c.Node())...)
	}
	out = append(out, node.Conflicts(c.Node(), led)...)
	var free []node.Port
	cp := c.controlPlane()
	for _, p := range append(cp.Ports(), node.Ports...) {
		_, cpRunning := cp.Daemons().Running(p.Component)
		_, nodeRunning := c.Node().Daemons().Running(p.Component)
		if p.Port == node.NodePort {
			// Answered by the running kube-proxy's rules.
			_, nodeRunning = c.Node().Daemons().Running(node.KubeProxy)
		}
		if !cpRunning && !nodeRunning {
			free = append(free, p)
		}
	}
	return append(out, node.PortConflicts(free)...)
}

// ConflictError lists what stopped the cluster from starting.
type ConflictError []node.Conflict

func (e ConflictError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the cluster would collide with what is on this machine; nothing was changed:\n")
	for _, c := range e {
		fmt.Fprintf(&b, "  - %s\n", c)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Up starts whatever is not running and waits until the node is Ready.
// Before anything is taken from the host it checks for conflicts, and
// every thing it takes is recorded first (LedgerPath).
func Up(ctx context.Context, c Config, out io.Writer) error {
	start := time.Now()
	n := c.Node()
	if err := node.CheckHost(n); err != nil {
		return err
	}
	led, err := ledger.Open(c.LedgerPath())
	if err != nil {
		return err
	}
	if conflicts := Conflicts(c, led); len(conflicts) > 0 {
		return ConflictError(conflicts)
	}
	// Keys, kubeconfigs, etcd's data and the ledger: root only.
	if err := ledger.PrivateDir(c.StateDir); err != nil {
		return err
	}
	if err := node.SetUpHost(n, led); err != nil {
		return fmt.Errorf("setting up the host: %w", err)
	}
	cp := c.controlPlane()
	if err := controlplane.Certs(cp, controlplane.NodeIdentity(NodeName), controlplane.ProxyIdentity, controlplane.KubeRouterIdentity); err != nil {
		return err
	}
	if err := controlplane.Up(ctx, cp, led, out); err != nil {
		return err
	}
	cs, err := adminClient(c.Kubeconfig())
	if err != nil {
		return err
	}
	if err := grantKubeRouter(ctx, cs); err != nil {
		return fmt.Errorf("granting kube-router its permissions: %w", err)
	}
	if err := node.Up(ctx, n, led, out); err != nil {
		return err
	}
	pushed, err := pushImages(ctx, c, out)
	if err != nil {
		return err
	}
	if err := pinFiles(c.PinFiles, pushed); err != nil {
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
func pushImages(ctx context.Context, c Config, out io.Writer) ([]oci.Pushed, error) {
	archives := oci.Archives(c.Images...)
	if len(archives) == 0 {
		return nil, nil
	}
	start := time.Now()
	t := c.Node().RegistryTLS
	tlsOpt, err := oci.ClientTLS(t.CA, t.ClientCert, t.ClientKey)
	if err != nil {
		return nil, err
	}
	pushed, err := oci.PushArchives(ctx, archives, oci.Mirror(node.LocalRegistry), tlsOpt)
	if err != nil {
		return nil, fmt.Errorf("pushing images to the local registry: %w", err)
	}
	if c.ImagePins != "" {
		if err := oci.WritePins(c.ImagePins, pushed, true); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(out, "==> %d images in the local registry %s (%.1fs), pinned by digest in %s\n", len(pushed), node.LocalRegistry, time.Since(start).Seconds(), c.ImagePins)
	return pushed, nil
}

// pinFiles writes each SRC=DST pair's DST: SRC with its images pinned.
func pinFiles(pairs []string, pushed []oci.Pushed) error {
	for _, pair := range pairs {
		src, dst, ok := strings.Cut(pair, "=")
		if !ok {
			return fmt.Errorf("pin file %q: want SRC=DST", pair)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, []byte(oci.PinText(string(b), pushed)), 0o644); err != nil {
			return err
		}
	}
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

// Down stops the node (its pods get their grace), then the control
// plane, gives back what the ledger records, and removes the cluster's
// state; containerd's image store and the registry's storage stay. With no
// ledger (no cluster was brought up here, or an earlier version of the
// launcher did it) it changes nothing: it lists what an earlier launcher
// left, with the commands that remove it.
func Down(c Config, out io.Writer) error {
	led, err := ledger.Load(c.LedgerPath())
	if errors.Is(err, ledger.ErrNone) {
		legacy := node.Legacy(c.StateDir, c.Node())
		if len(legacy) == 0 {
			fmt.Fprintf(out, "==> no cluster is up here (no %s): nothing to take down, nothing changed\n", c.LedgerPath())
			return nil
		}
		fmt.Fprintf(out, "==> no record of a cluster here, but an earlier version of this launcher left these; nothing was removed, the commands would remove them:\n")
		for _, l := range legacy {
			fmt.Fprintf(out, "  - %s\n", l)
		}
		return nil
	}
	if err != nil {
		return err
	}
	n := c.Node()
	fmt.Fprintf(out, "==> stopping the node and its pods\n")
	errs := []error{node.Down(n, led, 30*time.Second, out)}
	fmt.Fprintf(out, "==> stopping the control plane\n")
	errs = append(errs, controlplane.Down(c.controlPlane()))
	fmt.Fprintf(out, "==> giving back what the cluster took from the host (%d entries in %s)\n", len(led.Entries()), c.LedgerPath())
	errs = append(errs, node.GiveBack(led, out))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w\n(what could not be given back stays in %s for the next cluster down)", err, c.LedgerPath())
	}
	// Nothing may still be mounted below the state directory: removing
	// it would reach through a mount into what it shows.
	if m := take.MountsUnder(c.StateDir); len(m) > 0 {
		return fmt.Errorf("still mounted under %s, which is left in place: %s", c.StateDir, strings.Join(m, ", "))
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
