// Command devcluster runs a real Kubernetes on this machine without
// Docker: etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
// and one node of a local registry, kubelet, containerd with runc, the CNI bridge,
// kube-proxy and kube-router's NetworkPolicy firewall, all built from
// source into the tools cache (scripts/tools.sh).
//
//	devcluster up --state .cache/devcluster --etcd ... --kubelet ...
//	devcluster down --state .cache/devcluster ...   (the same flags: the node's cleanup uses its binaries)
//	devcluster status --state .cache/devcluster
//	devcluster leftovers --state .cache/devcluster          what of the node is still on the host (exit 1 if anything)
//	devcluster docker up|down|host --state .cache/docker --dockerd /usr/bin/dockerd ...
//	    a dockerd of the checkout's own when none runs (the kind path, the cluster-beside-Docker test)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/purchase-system/purchase-system/devcluster/internal/cluster"
	"github.com/purchase-system/purchase-system/devcluster/internal/controlplane"
	"github.com/purchase-system/purchase-system/devcluster/internal/daemon"
	"github.com/purchase-system/purchase-system/devcluster/internal/dockerd"
	"github.com/purchase-system/purchase-system/devcluster/node"
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
		err = clusterCmd(ctx, os.Args[1], os.Args[2:])
	case "leftovers":
		err = leftovers(os.Args[2:])
	case "docker":
		err = dockerCmd(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: devcluster up|down|status|leftovers [flags] | devcluster docker up|down|host [flags]")
	os.Exit(2)
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func clusterCmd(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var c cluster.Config
	var addons, images, cmArgs, pinFiles list
	fs.StringVar(&c.StateDir, "state", ".cache/devcluster", "directory for the cluster's certificates, data, logs and kubeconfig")
	fs.StringVar(&c.Bin.Etcd, "etcd", "", "etcd binary")
	fs.StringVar(&c.Bin.APIServer, "kube-apiserver", "", "kube-apiserver binary")
	fs.StringVar(&c.Bin.ControllerManager, "kube-controller-manager", "", "kube-controller-manager binary")
	fs.StringVar(&c.Bin.Scheduler, "kube-scheduler", "", "kube-scheduler binary")
	fs.StringVar(&c.Kubectl, "kubectl", "kubectl", "kubectl binary, for applying addons")
	fs.DurationVar(&c.HPASyncPeriod, "hpa-sync-period", 15*time.Second, "how often the HPA controller re-evaluates")
	fs.Var(&cmArgs, "controller-manager-arg", "flag added to kube-controller-manager's, e.g. --concurrent-horizontal-pod-autoscaler-syncs=20 (repeatable; takes effect when it starts)")
	fs.Var(&addons, "addon", "kustomize directory to apply once the node is Ready (repeatable)")
	fs.StringVar(&c.NodeBin.Kubelet, "kubelet", "", "kubelet binary")
	fs.StringVar(&c.NodeBin.KubeProxy, "kube-proxy", "", "kube-proxy binary")
	fs.StringVar(&c.NodeBin.ContainerdDir, "containerd-dir", "", "directory of containerd, ctr and containerd-shim-runc-v2")
	fs.StringVar(&c.NodeBin.Runc, "runc", "", "runc binary")
	fs.StringVar(&c.NodeBin.CNIDir, "cni-dir", "", "directory of the CNI plugins")
	fs.StringVar(&c.NodeBin.KubeRouter, "kube-router", "", "kube-router binary (the NetworkPolicy firewall)")
	fs.StringVar(&c.NodeBin.Crictl, "crictl", "", "crictl binary")
	fs.StringVar(&c.ImageDir, "containerd-root", ".cache/containerd", "containerd's root: images and snapshots, kept across down")
	fs.StringVar(&c.NodeBin.Registry, "registry", "", "CNCF distribution's registry binary (the node pulls every image from it)")
	fs.StringVar(&c.RegistryDir, "registry-root", ".cache/registry", "the local registry's storage, kept across down")
	fs.Var(&images, "images", "image archive, or directory of them, to push to the local registry at start (repeatable)")
	fs.StringVar(&c.ImagePins, "image-pins", "", "write a kustomize Component pinning every pushed image by digest here")
	fs.Var(&pinFiles, "pin-file", "SRC=DST: write DST, SRC with every image it names pinned by digest (repeatable; for pod templates inside ConfigMaps)")
	_ = fs.Parse(args)
	c.Addons, c.Images, c.ControllerManagerArgs, c.PinFiles = addons, images, cmArgs, pinFiles
	// Kubeconfigs and configuration files name these paths: they must not
	// depend on the directory a later command runs in.
	for _, p := range []*string{&c.StateDir, &c.ImageDir, &c.RegistryDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	switch cmd {
	case "up":
		return cluster.Up(ctx, c, os.Stdout)
	case "down":
		return cluster.Down(c, os.Stdout)
	}
	dirs := map[string]daemon.Dir{}
	for _, name := range controlplane.Components {
		dirs[name] = controlplane.Config{Dir: c.StateDir}.Daemons()
	}
	for _, name := range node.Components {
		dirs[name] = c.Node().Daemons()
	}
	for _, name := range append(append([]string{}, controlplane.Components...), node.Components...) {
		state := "stopped"
		if pid, ok := dirs[name].Running(name); ok {
			state = fmt.Sprintf("running (pid %d)", pid)
		}
		fmt.Printf("%-24s %s\n", name, state)
	}
	return nil
}

// leftovers prints what of the node is still on the host after down.
func leftovers(args []string) error {
	fs := flag.NewFlagSet("leftovers", flag.ExitOnError)
	state := fs.String("state", ".cache/devcluster", "the cluster's state directory")
	images := fs.String("containerd-root", ".cache/containerd", "containerd's root")
	_ = fs.Parse(args)
	c := cluster.Config{StateDir: *state, ImageDir: *images}
	for _, p := range []*string{&c.StateDir, &c.ImageDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	left := node.Leftovers(c.Node(), c.LedgerPath())
	for _, l := range left {
		fmt.Println(l)
	}
	if len(left) > 0 {
		return fmt.Errorf("%d things of the node are left on the host", len(left))
	}
	return nil
}

// dockerCmd runs the checkout's own dockerd (package dockerd). host
// prints the DOCKER_HOST to use: the checkout's dockerd's when it runs,
// empty when another dockerd runs (Docker's default), and fails when
// neither does.
func dockerCmd(ctx context.Context, args []string) error {
	if len(args) == 0 {
		usage()
	}
	fs := flag.NewFlagSet("docker "+args[0], flag.ExitOnError)
	var c dockerd.Config
	fs.StringVar(&c.StateDir, "state", ".cache/docker", "the checkout's dockerd's data root, logs and ledger")
	fs.StringVar(&c.RunDir, "run-dir", "/run/purchase-system-docker", "its sockets (a short path: unix sockets live there)")
	fs.StringVar(&c.Dockerd, "dockerd", "/usr/bin/dockerd", "dockerd binary (Debian's docker.io)")
	fs.StringVar(&c.Containerd, "containerd", "/usr/bin/containerd", "containerd binary for dockerd")
	fs.StringVar(&c.Bounded, "runc-bounded", "", "runc-bounded (make build), used when this machine's capability bounding set lacks what Docker gives privileged containers")
	fs.StringVar(&c.Runc, "runc", "/usr/sbin/runc", "the runc runc-bounded runs (Debian's, of docker.io)")
	_ = fs.Parse(args[1:])
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return err
	}
	c.StateDir = abs
	switch args[0] {
	case "up":
		if pid := dockerd.Foreign(c); pid != 0 {
			fmt.Fprintf(os.Stderr, "==> using the dockerd that runs on this machine (pid %d), as it is\n", pid)
			return nil
		}
		return dockerd.Up(ctx, c, os.Stderr)
	case "down":
		return dockerd.Down(c, os.Stderr)
	case "host":
		switch {
		case dockerd.Running(c):
			fmt.Println(c.Host())
		case dockerd.Foreign(c) != 0:
			fmt.Println("")
		default:
			return errors.New("no dockerd runs (devcluster docker up starts one)")
		}
		return nil
	}
	usage()
	return nil
}
