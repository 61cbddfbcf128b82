// Package procnode is a virtual-kubelet provider that runs each pod's
// containers as processes of this machine: the container image names a
// program of the project, each pod gets its own network namespace and IP,
// probes drive readiness, exited processes are restarted per restartPolicy,
// deletion sends SIGTERM then SIGKILL, logs go to files that kubectl logs
// reads, and CPU and memory are read from /proc for metrics-server.
package procnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/purchase-system/purchase-system/e2e/internal/podnet"
)

// Config configures the node.
type Config struct {
	NodeName string
	HostIP   string // the node's InternalIP, where its kubelet API listens
	StateDir string // pods/<namespace>_<name>_<uid>/...
	// Images is the image store containers run from.
	Images ImageStore
	// PodExec is the helper command that assembles a container's root
	// and executes its program: [binary, "pod-exec"].
	PodExec []string
	Client  kubernetes.Interface
	Logger  *slog.Logger
	// Capacity advertised to the scheduler. The node overcommits: pods are
	// processes sharing this machine, not reserved slices of it.
	Capacity corev1.ResourceList
}

// Provider implements virtual-kubelet's provider interfaces.
type Provider struct {
	cfg     Config
	logger  *slog.Logger
	ipam    podnet.Allocator
	volumes *volumes
	hosts   *hostsFiles
	podsLst corev1listers.PodLister

	mu     sync.Mutex
	pods   map[string]*podRuntime
	notify func(*corev1.Pod)

	events  record.EventRecorder
	started time.Time
}

// New returns the provider constructor virtual-kubelet's nodeutil wants,
// and sets up the node object it registers.
func New(cfg Config, hosts *hostsFiles) nodeutil.NewProviderFunc {
	return func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		p := &Provider{
			cfg:     cfg,
			logger:  cfg.Logger,
			volumes: &volumes{client: cfg.Client, src: envSources{pc.ConfigMaps, pc.Secrets, pc.Services}},
			hosts:   hosts,
			podsLst: pc.Pods,
			pods:    map[string]*podRuntime{},
			started: time.Now(),
		}
		b := record.NewBroadcaster()
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cfg.Client.CoreV1().Events("")})
		p.events = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.NodeName})
		p.configureNode(pc.Node)
		return p, nil, nil
	}
}

func (p *Provider) configureNode(n *corev1.Node) {
	capacity := p.cfg.Capacity
	if capacity == nil {
		capacity = corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("16"),
			corev1.ResourceMemory: resource.MustParse("64Gi"),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
	}
	n.Status.Capacity, n.Status.Allocatable = capacity, capacity
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: p.cfg.HostIP},
		{Type: corev1.NodeHostName, Address: p.cfg.NodeName},
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	hostname, _ := os.Hostname()
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.37.2-process-node",
		ContainerRuntimeVersion: "process://" + hostname, MachineID: hostname,
	}
	n.Labels["kubernetes.io/os"] = "linux"
	n.Labels["kubernetes.io/arch"] = "amd64"
	n.Labels["node.kubernetes.io/instance-type"] = "process-node"
}

func key(ns, name string) string { return ns + "/" + name }

func (p *Provider) envSources() envSources { return p.volumes.src }

// event records a Kubernetes event on the pod (kubectl describe shows it).
func (p *Provider) event(pod *corev1.Pod, typ, reason, msg string) {
	p.events.Event(pod, typ, reason, msg)
}

// writeResolvConf writes the pod's /etc/resolv.conf: the cluster's search
// domains for its namespace and the host's name servers (Service names
// resolve from the pod's /etc/hosts, the node's stand-in for cluster DNS).
func (p *Provider) writeResolvConf(r *podRuntime) (string, error) {
	var b strings.Builder
	ns := r.spec.Namespace
	fmt.Fprintf(&b, "search %s.svc.cluster.local svc.cluster.local cluster.local\n", ns)
	if host, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		for _, l := range strings.Split(string(host), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "nameserver") {
				b.WriteString(strings.TrimSpace(l) + "\n")
			}
		}
	}
	b.WriteString("options ndots:5\n")
	path := filepath.Join(r.dir, "resolv.conf")
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// CreatePod starts a pod. Work that may fail (network, volumes) happens in
// the background and is reported in the pod's status.
func (p *Provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	if old, ok := p.pods[k]; ok && old.spec.UID == pod.UID {
		p.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &podRuntime{
		node: p, key: k, spec: pod.DeepCopy(), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		dir: filepath.Join(p.cfg.StateDir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID)),
		ns:  podnet.NamespaceName(string(pod.UID)),
	}
	p.pods[k] = r
	p.mu.Unlock()
	p.logger.Info("creating pod", "pod", k)
	go r.start()
	return nil
}

// UpdatePod accepts spec changes the API allows on a running pod (image
// changes are not applied: a new pod is the way to change a program).
func (p *Provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := p.pods[key(pod.Namespace, pod.Name)]; ok {
		r.mu.Lock()
		r.spec.Labels, r.spec.Annotations = pod.Labels, pod.Annotations
		r.spec.DeletionGracePeriodSeconds = pod.DeletionGracePeriodSeconds
		r.mu.Unlock()
	}
	return nil
}

// DeletePod stops the pod's containers gracefully; the terminal status is
// reported once they are gone.
func (p *Provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	r, ok := p.pods[key(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	grace := r.grace()
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	p.logger.Info("deleting pod", "pod", r.key, "grace", grace.String())
	r.terminate(grace)
	return nil
}

func (p *Provider) forget(r *podRuntime) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pods[r.key] == r {
		delete(p.pods, r.key)
	}
}

// latest is the pod's current object from the informer, or the one the
// pod was created with.
func (p *Provider) latest(r *podRuntime) *corev1.Pod {
	if pod, err := p.podsLst.Pods(r.spec.Namespace).Get(r.spec.Name); err == nil && pod.UID == r.spec.UID {
		return pod
	}
	return r.spec
}

func (p *Provider) get(ns, name string) (*podRuntime, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.pods[key(ns, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", ns, name)
	}
	return r, nil
}

// withStatus is the pod object with its current status.
func (r *podRuntime) withStatus() *corev1.Pod {
	r.mu.Lock()
	pod := r.spec.DeepCopy()
	r.mu.Unlock()
	pod.Status = r.status()
	r.stabilise(&pod.Status)
	return pod
}

// GetPod returns the pod with its current status.
func (p *Provider) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	r, err := p.get(ns, name)
	if err != nil {
		return nil, err
	}
	return r.withStatus(), nil
}

// GetPodStatus returns the pod's current status.
func (p *Provider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod on the node.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	rs := p.runtimes()
	out := make([]*corev1.Pod, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.withStatus())
	}
	return out, nil
}

// NotifyPods registers virtual-kubelet's status callback.
func (p *Provider) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.mu.Unlock()
}

func (p *Provider) notifyStatus(r *podRuntime) {
	p.mu.Lock()
	f := p.notify
	p.mu.Unlock()
	if f != nil {
		f(r.withStatus())
	}
}

// GetContainerLogs serves kubectl logs from the container's log file.
func (p *Provider) GetContainerLogs(ctx context.Context, ns, name, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	r, err := p.get(ns, name)
	if err != nil {
		return nil, err
	}
	for _, c := range r.containers {
		if c.spec.Name == containerName {
			path := c.logPath
			if opts.Previous {
				path = c.previousLogPath()
			}
			return openLog(ctx, path, opts)
		}
	}
	return nil, errdefs.NotFoundf("pod %s/%s has no container %q", ns, name, containerName)
}

// RunInContainer is kubectl exec; a process has no image filesystem to
// run commands in.
func (p *Provider) RunInContainer(context.Context, string, string, string, []string, api.AttachIO) error {
	return errors.New("kubectl exec is not supported by the process node: containers are processes of the host")
}

// AttachToContainer is kubectl attach.
func (p *Provider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errors.New("kubectl attach is not supported by the process node: read kubectl logs instead")
}

// PortForward connects a kubectl port-forward stream to the pod's port.
func (p *Provider) PortForward(ctx context.Context, ns, name string, port int32, stream io.ReadWriteCloser) error {
	r, err := p.get(ns, name)
	if err != nil {
		return err
	}
	if r.ip == nil {
		return fmt.Errorf("pod %s has no IP yet", r.key)
	}
	// Like the kubelet: the pod's localhost, from inside its network
	// namespace, so servers bound to 127.0.0.1 are reachable too.
	conn, err := podnet.DialInPod(ctx, r.ns, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// GetStatsSummary is the kubelet's /stats/summary.
func (p *Provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return p.summary(), nil
}

// GetMetricsResource is the kubelet's /metrics/resource, which
// metrics-server scrapes.
func (p *Provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return p.resourceMetrics(), nil
}

// runtimes is a snapshot of the node's pods, to work on without the lock.
func (p *Provider) runtimes() []*podRuntime {
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := make([]*podRuntime, 0, len(p.pods))
	for _, r := range p.pods {
		rs = append(rs, r)
	}
	return rs
}

// Shutdown stops every pod (on node exit), waiting up to grace.
func (p *Provider) Shutdown(grace time.Duration) {
	rs := p.runtimes()
	for _, r := range rs {
		r.terminate(grace)
	}
	for _, r := range rs {
		select {
		case <-r.done:
		case <-time.After(grace + 5*time.Second):
		}
	}
}
