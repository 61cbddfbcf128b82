// Command devcluster runs a real Kubernetes on this machine without
// Docker: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// from locally built binaries, and one node whose pods are processes.
//
//	devcluster up --state .cache/devcluster --etcd ... --image repo=binary ...
//	devcluster down --state .cache/devcluster
//	devcluster status --state .cache/devcluster
//	devcluster node ...       the node daemon (started by up)
//	devcluster pod-exec ...   the container start helper (run by the node)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/purchase-system/purchase-system/e2e/internal/controlplane"
	"github.com/purchase-system/purchase-system/e2e/internal/devcluster"
	"github.com/purchase-system/purchase-system/e2e/internal/nodeagent"
	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/e2e/internal/procnode"
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
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devcluster:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: devcluster up|down|status|node|pod-exec [flags]")
	os.Exit(2)
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func cluster(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var c devcluster.Config
	c.Images = procnode.Images{}
	var addons list
	fs.StringVar(&c.StateDir, "state", ".cache/devcluster", "directory for the cluster's certificates, data, logs and kubeconfig")
	fs.StringVar(&c.Bin.Etcd, "etcd", "", "etcd binary")
	fs.StringVar(&c.Bin.APIServer, "kube-apiserver", "", "kube-apiserver binary")
	fs.StringVar(&c.Bin.ControllerManager, "kube-controller-manager", "", "kube-controller-manager binary")
	fs.StringVar(&c.Bin.Scheduler, "kube-scheduler", "", "kube-scheduler binary")
	fs.StringVar(&c.Kubectl, "kubectl", "kubectl", "kubectl binary, for applying addons")
	fs.DurationVar(&c.HPASyncPeriod, "hpa-sync-period", 15*time.Second, "how often the HPA controller re-evaluates")
	fs.Var(c.Images, "image", "repository=/path/to/binary: the program a container image runs (repeatable)")
	fs.Var(&addons, "addon", "kustomize directory to apply once the node is Ready (repeatable)")
	_ = fs.Parse(args)
	c.Addons = addons
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
	cp := controlplane.Config{Dir: c.StateDir}
	for _, name := range append(controlplane.Components, devcluster.NodeName) {
		state := "stopped"
		if pid, ok := cp.Daemons().Running(name); ok {
			state = fmt.Sprintf("running (pid %d)", pid)
		}
		fmt.Printf("%-24s %s\n", name, state)
	}
	return nil
}

func node(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	c := nodeagent.Config{Images: procnode.Images{}}
	fs.StringVar(&c.NodeName, "name", devcluster.NodeName, "node name")
	fs.StringVar(&c.NodeKubeconfig, "kubeconfig", "", "kubeconfig of the node's identity")
	fs.StringVar(&c.ProxyKubeconfig, "proxy-kubeconfig", "", "kubeconfig of the service proxy's identity")
	fs.StringVar(&c.CAFile, "ca", "", "CA that signs client certificates")
	fs.StringVar(&c.ServingCert, "serving-cert", "", "kubelet API serving certificate")
	fs.StringVar(&c.ServingKey, "serving-key", "", "kubelet API serving key")
	fs.StringVar(&c.StateDir, "state", "", "directory for pods' volumes and logs")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 30*time.Second, "how long pods get to stop when the node stops")
	fs.Var(c.Images, "image", "repository=/path/to/binary (repeatable)")
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
	var mounts []podexec.Mount
	i := 0
	for ; i < len(args) && args[i] != "--"; i++ {
		if args[i] == "--mount" && i+1 < len(args) {
			m, err := podexec.ParseMount(args[i+1])
			if err != nil {
				return err
			}
			mounts = append(mounts, m)
			i++
			continue
		}
		return fmt.Errorf("pod-exec: unexpected argument %q", args[i])
	}
	if i >= len(args) {
		return fmt.Errorf("pod-exec: missing -- before the program")
	}
	return podexec.Exec(mounts, args[i+1:])
}
