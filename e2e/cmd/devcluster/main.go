// Command devcluster runs a real Kubernetes on this machine without
// Docker: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// from locally built binaries, and one node whose pods are processes.
//
//	devcluster up --state .cache/devcluster --etcd ... --image-store .cache/images
//	devcluster down --state .cache/devcluster
//	devcluster status --state .cache/devcluster
//	devcluster load-image --store DIR ARCHIVE...   add image archives to the node's image store
//	devcluster leftovers --state DIR   what of the node is still on the host (exit 1 if anything)
//	devcluster node ...       the node daemon (started by up)
//	devcluster pod-exec ...   the container start helper (run by the node)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/purchase-system/purchase-system/e2e/internal/controlplane"
	"github.com/purchase-system/purchase-system/e2e/internal/daemon"
	"github.com/purchase-system/purchase-system/e2e/internal/devcluster"
	"github.com/purchase-system/purchase-system/e2e/internal/kubenode"
	"github.com/purchase-system/purchase-system/e2e/internal/nodeagent"
	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/images/oci"
	"github.com/purchase-system/purchase-system/servicekit/logging"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "up", "down", "status":
		err = cluster(ctx, os.Args[1], os.Args[2:])
	case "node":
		err = node(ctx, os.Args[2:])
	case "pod-exec":
		err = podExec(os.Args[2:])
	case "load-image":
		err = loadImage(os.Args[2:])
	case "leftovers":
		err = leftovers(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: devcluster up|down|status|leftovers|load-image|node|pod-exec [flags]")
	os.Exit(2)
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func cluster(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var c devcluster.Config
	var addons list
	fs.StringVar(&c.StateDir, "state", ".cache/devcluster", "directory for the cluster's certificates, data, logs and kubeconfig")
	fs.StringVar(&c.Bin.Etcd, "etcd", "", "etcd binary")
	fs.StringVar(&c.Bin.APIServer, "kube-apiserver", "", "kube-apiserver binary")
	fs.StringVar(&c.Bin.ControllerManager, "kube-controller-manager", "", "kube-controller-manager binary")
	fs.StringVar(&c.Bin.Scheduler, "kube-scheduler", "", "kube-scheduler binary")
	fs.StringVar(&c.Kubectl, "kubectl", "kubectl", "kubectl binary, for applying addons")
	fs.DurationVar(&c.HPASyncPeriod, "hpa-sync-period", 15*time.Second, "how often the HPA controller re-evaluates")
	fs.StringVar(&c.ImageStore, "image-store", ".cache/images", "the image store containers run from (make images fills it)")
	fs.Var(&addons, "addon", "kustomize directory to apply once the node is Ready (repeatable)")
	var images list
	fs.StringVar(&c.Node, "node", "process", "the node: kubelet (kubelet, containerd, runc, CNI, kube-proxy, kube-router) or process")
	fs.StringVar(&c.NodeBin.Kubelet, "kubelet", "", "kubelet binary")
	fs.StringVar(&c.NodeBin.KubeProxy, "kube-proxy", "", "kube-proxy binary")
	fs.StringVar(&c.NodeBin.ContainerdDir, "containerd-dir", "", "directory of containerd, ctr and containerd-shim-runc-v2")
	fs.StringVar(&c.NodeBin.Runc, "runc", "", "runc binary")
	fs.StringVar(&c.NodeBin.CNIDir, "cni-dir", "", "directory of the CNI plugins")
	fs.StringVar(&c.NodeBin.KubeRouter, "kube-router", "", "kube-router binary (the NetworkPolicy firewall)")
	fs.StringVar(&c.NodeBin.Crictl, "crictl", "", "crictl binary")
	fs.StringVar(&c.ImageDir, "containerd-root", ".cache/containerd", "containerd's root: images and snapshots, kept across down")
	fs.Var(&images, "images", "image archive, or directory of them, to import into containerd at start (repeatable)")
	_ = fs.Parse(args)
	c.Addons = addons
	c.Images = images
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c.Self = self
	switch cmd {
	case "up":
		return devcluster.Up(ctx, c, os.Stdout)
	case "down":
		return devcluster.Down(c, os.Stdout)
	}
	dirs := map[string]daemon.Dir{}
	for _, name := range append(controlplane.Components, devcluster.NodeName) {
		dirs[name] = controlplane.Config{Dir: c.StateDir}.Daemons()
	}
	for _, name := range kubenode.Components {
		dirs[name] = daemon.Dir(filepath.Join(c.StateDir, "node"))
	}
	for _, name := range append(append(controlplane.Components, kubenode.Components...), devcluster.NodeName) {
		state := "stopped"
		if pid, ok := dirs[name].Running(name); ok {
			state = fmt.Sprintf("running (pid %d)", pid)
		}
		fmt.Printf("%-24s %s\n", name, state)
	}
	return nil
}

func node(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	c := nodeagent.Config{}
	fs.StringVar(&c.NodeName, "name", devcluster.NodeName, "node name")
	fs.StringVar(&c.NodeKubeconfig, "kubeconfig", "", "kubeconfig of the node's identity")
	fs.StringVar(&c.ProxyKubeconfig, "proxy-kubeconfig", "", "kubeconfig of the service proxy's identity")
	fs.StringVar(&c.CAFile, "ca", "", "CA that signs client certificates")
	fs.StringVar(&c.ServingCert, "serving-cert", "", "kubelet API serving certificate")
	fs.StringVar(&c.ServingKey, "serving-key", "", "kubelet API serving key")
	fs.StringVar(&c.StateDir, "state", "", "directory for pods' volumes and logs")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 30*time.Second, "how long pods get to stop when the node stops")
	fs.StringVar(&c.ImageStore, "image-store", "", "the image store containers run from")
	_ = fs.Parse(args)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c.PodExec = []string{self, "pod-exec"}
	c.Logger = logging.New(os.Stdout, "process-node", os.Getenv("LOG_LEVEL"))
	return nodeagent.Run(ctx, c)
}

func podExec(args []string) error {
	fs := flag.NewFlagSet("pod-exec", flag.ExitOnError)
	spec := fs.String("spec", "", "the container's spec (JSON), written by the node")
	_ = fs.Parse(args)
	s, err := podexec.Load(*spec)
	if err != nil {
		return err
	}
	return podexec.Run(s)
}

// loadImage adds archives (make images', or docker save's) to the image
// store the node runs containers from: the twin of kind load image-archive.
func loadImage(args []string) error {
	fs := flag.NewFlagSet("load-image", flag.ExitOnError)
	dir := fs.String("store", ".cache/images", "the node's image store")
	_ = fs.Parse(args)
	if fs.NArg() == 0 {
		return fmt.Errorf("load-image: name at least one archive")
	}
	st, err := oci.OpenStore(*dir)
	if err != nil {
		return err
	}
	for _, a := range fs.Args() {
		refs, err := st.Load(a)
		if err != nil {
			return err
		}
		fmt.Printf("loaded %s: %s\n", a, strings.Join(refs, ", "))
	}
	return nil
}

// leftovers prints what of the node is still on the host after down.
func leftovers(args []string) error {
	fs := flag.NewFlagSet("leftovers", flag.ExitOnError)
	state := fs.String("state", ".cache/devcluster", "the cluster's state directory")
	_ = fs.Parse(args)
	left := kubenode.Leftovers(filepath.Join(*state, "node"))
	for _, l := range left {
		fmt.Println(l)
	}
	if len(left) > 0 {
		return fmt.Errorf("%d things of the node are left on the host", len(left))
	}
	return nil
}
