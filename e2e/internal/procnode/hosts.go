package procnode

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"

	"github.com/purchase-system/purchase-system/e2e/internal/podnet"
)

// hostsFiles gives every pod an /etc/hosts that resolves Service names
// (name, name.namespace, name.namespace.svc[.cluster.local]) to their
// cluster IPs, or for headless Services to their ready endpoints: the
// node's stand-in for cluster DNS. ip netns exec binds the file over
// /etc/hosts inside the pod.
type hostsFiles struct {
	services corev1listers.ServiceLister
	slices   discoverylisters.EndpointSliceLister

	mu   sync.Mutex
	pods map[string]*podRuntime
}

// NewHostsFiles builds /etc/hosts files from the given listers.
func NewHostsFiles(services corev1listers.ServiceLister, slices discoverylisters.EndpointSliceLister) *hostsFiles {
	return &hostsFiles{services: services, slices: slices, pods: map[string]*podRuntime{}}
}

func (h *hostsFiles) path(r *podRuntime) string {
	return filepath.Join(podnet.HostsDir(r.ns), "hosts")
}

// write registers the pod and writes its hosts file.
func (h *hostsFiles) write(r *podRuntime) error {
	h.mu.Lock()
	h.pods[r.key] = r
	h.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(h.path(r)), 0o755); err != nil {
		return err
	}
	return h.render(r)
}

func (h *hostsFiles) forget(r *podRuntime) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pods[r.key] == r {
		delete(h.pods, r.key)
	}
}

// Refresh rewrites every pod's file after Services or endpoints changed.
func (h *hostsFiles) Refresh() {
	h.mu.Lock()
	rs := make([]*podRuntime, 0, len(h.pods))
	for _, r := range h.pods {
		rs = append(rs, r)
	}
	h.mu.Unlock()
	for _, r := range rs {
		_ = h.render(r)
	}
}

func (h *hostsFiles) render(r *podRuntime) error {
	var b strings.Builder
	b.WriteString("# written by the process node: Service names and this pod\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if r.ip != nil {
		fmt.Fprintf(&b, "%s\t%s\n", r.ip, r.spec.Name)
	}
	svcs, _ := h.services.List(labels.Everything())
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Namespace+"/"+svcs[i].Name < svcs[j].Namespace+"/"+svcs[j].Name })
	for _, svc := range svcs {
		names := []string{svc.Name + "." + svc.Namespace + ".svc.cluster.local", svc.Name + "." + svc.Namespace + ".svc", svc.Name + "." + svc.Namespace}
		if svc.Namespace == r.spec.Namespace {
			names = append(names, svc.Name)
		}
		for _, ip := range h.addresses(svc) {
			fmt.Fprintf(&b, "%s\t%s\n", ip, strings.Join(names, " "))
		}
	}
	// Rewritten in place: the file is bind-mounted into running pods by
	// inode, so replacing it with a new file would not reach them.
	f, err := os.OpenFile(h.path(r), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// addresses are what a Service name resolves to.
func (h *hostsFiles) addresses(svc *corev1.Service) []string {
	if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		return []string{svc.Spec.ClusterIP}
	}
	sel, _ := labels.Parse(discoveryv1.LabelServiceName + "=" + svc.Name)
	slices, _ := h.slices.EndpointSlices(svc.Namespace).List(sel)
	var out []string
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				out = append(out, ep.Addresses...)
			}
		}
	}
	sort.Strings(out)
	return out
}
