// Package nodeagent runs the dev cluster's node: the virtual-kubelet with
// the process provider (kubelet API, pod lifecycle, stats), the service
// proxy and the per-pod /etc/hosts files, until it is told to stop.
package nodeagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/podnet"
	"github.com/purchase-system/purchase-system/e2e/internal/procnode"
	"github.com/purchase-system/purchase-system/e2e/internal/svcproxy"
	"github.com/purchase-system/purchase-system/images/oci"
)

// Config is the node's configuration.
type Config struct {
	NodeName        string
	NodeKubeconfig  string // the kubelet's identity (system:node:<name>)
	ProxyKubeconfig string // the service proxy's identity (system:kube-proxy)
	CAFile          string // trusted for client certificates on the kubelet API
	ServingCert     string
	ServingKey      string
	StateDir        string
	ImageStore      string // directory of the image store containers run from
	PodExec         []string
	Logger          *slog.Logger
	ShutdownGrace   time.Duration
}

// Run serves until ctx ends, then stops every pod and returns.
func Run(ctx context.Context, c Config) error {
	if err := podnet.CheckPrivileges(); err != nil {
		return err
	}
	if err := podnet.SetUpHost(); err != nil {
		return err
	}
	// Namespaces left by a node that was killed: their processes are gone
	// (they die with the node), so the namespaces are just litter.
	procnode.ReapOrphans(c.StateDir)
	for _, ns := range podnet.Namespaces() {
		_ = podnet.DeletePod(ns)
	}

	nodeClient, err := client(c.NodeKubeconfig)
	if err != nil {
		return err
	}
	proxyClient, err := client(c.ProxyKubeconfig)
	if err != nil {
		return err
	}

	// Services and EndpointSlices feed the proxy and the hosts files.
	factory := informers.NewSharedInformerFactory(proxyClient, 10*time.Minute)
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	hosts := procnode.NewHostsFiles(svcInf.Lister(), sliceInf.Lister())
	proxy := svcproxy.New(svcInf.Lister(), sliceInf.Lister(), []string{"127.0.0.1", "::1", podnet.HostIP}, c.Logger)
	changes := make(chan struct{}, 1)
	signal := func() {
		select {
		case changes <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { signal() },
		UpdateFunc: func(any, any) { signal() },
		DeleteFunc: func(any) { signal() },
	}
	if _, err := svcInf.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	if _, err := sliceInf.Informer().AddEventHandler(handler); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	proxyChanges := make(chan struct{}, 1)
	go proxy.Run(ctx, proxyChanges)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-changes:
				hosts.Refresh()
				select {
				case proxyChanges <- struct{}{}:
				default:
				}
			}
		}
	}()

	images, err := oci.OpenStore(c.ImageStore)
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	var provider *procnode.Provider
	newProvider := procnode.New(procnode.Config{
		NodeName: c.NodeName, HostIP: podnet.HostIP, StateDir: c.StateDir, Images: images,
		PodExec: c.PodExec, Client: nodeClient, Logger: c.Logger,
	}, hosts)

	auth, err := kubeletAuth(nodeClient, c)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	serving, err := tls.LoadX509KeyPair(c.ServingCert, c.ServingKey)
	if err != nil {
		return fmt.Errorf("kubelet serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	n, err := nodeutil.NewNode(c.NodeName,
		func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
			p, np, err := newProvider(pc)
			provider, _ = p.(*procnode.Provider)
			return p, np, err
		},
		nodeutil.WithClient(nodeClient),
		nodeutil.AttachProviderRoutes(mux),
		func(cfg *nodeutil.NodeConfig) error {
			cfg.HTTPListenAddr = podnet.HostIP + ":10250"
			cfg.Handler = nodeutil.WithAuth(auth, mux)
			// Clients may present a certificate (the API server does) or a
			// bearer token (metrics-server does): verify the first if given.
			cfg.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{serving},
				ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
			// Env is resolved by the provider: only it knows the pod IP.
			cfg.SkipDownwardAPIResolution = true
			cfg.NumWorkers = 4
			return nil
		},
	)
	if err != nil {
		return err
	}
	runCtx, stopNode := context.WithCancel(context.Background())
	defer stopNode()
	go func() {
		if err := n.Run(runCtx); err != nil && runCtx.Err() == nil {
			c.Logger.Error("virtual-kubelet stopped", "err", err)
		}
	}()
	if err := n.WaitReady(ctx, time.Minute); err != nil {
		return fmt.Errorf("node did not become ready: %w", err)
	}
	c.Logger.Info("node ready", "node", c.NodeName, "kubelet", podnet.HostIP+":10250")
	select {
	case <-ctx.Done():
	case <-n.Done():
		return fmt.Errorf("node stopped: %w", n.Err())
	}
	c.Logger.Info("stopping every pod")
	if provider != nil {
		provider.Shutdown(c.ShutdownGrace)
	}
	stopNode()
	proxy.Close()
	return nil
}

func client(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

// kubeletAuth authenticates kubelet API callers by client certificate or
// by token (TokenReview) and authorises them with SubjectAccessReview, as
// a kubelet with webhook auth does.
func kubeletAuth(cs kubernetes.Interface, c Config) (nodeutil.Auth, error) {
	ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", c.CAFile)
	if err != nil {
		return nil, err
	}
	return nodeutil.WebhookAuth(cs, c.NodeName, func(w *nodeutil.WebhookAuthConfig) error {
		w.AuthnConfig.ClientCertificateCAContentProvider = ca
		return nil
	})
}
