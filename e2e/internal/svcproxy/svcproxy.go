// Package svcproxy is the process node's kube-proxy: a userspace TCP proxy
// that listens on every Service's cluster IP and port (the service range is
// routed locally on the host) and on 127.0.0.1/[::1]/host IP for NodePort
// Services, and forwards each connection to a ready endpoint from the
// Service's EndpointSlices. So pods reach Services by cluster IP, and the
// seed's `hey ... http://localhost:30080/buy` reaches the web server pods.
package svcproxy

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
)

// Proxy keeps one listener per (address, port) a Service needs.
type Proxy struct {
	services corev1listers.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	// NodeAddresses are where NodePorts listen.
	nodeAddresses []string
	logger        *slog.Logger

	mu        sync.Mutex
	listeners map[string]*listener // by listen address
}

// listener is one open port and the Service port it forwards to.
type listener struct {
	ln      net.Listener
	svcNS   string
	svcName string
	port    string // the Service port's name, to pick endpoint ports
	target  int32  // fallback endpoint port when slices carry none
}

// New returns a proxy; call Sync whenever Services or EndpointSlices
// change.
func New(services corev1listers.ServiceLister, slices discoverylisters.EndpointSliceLister, nodeAddresses []string, logger *slog.Logger) *Proxy {
	return &Proxy{services: services, slices: slices, nodeAddresses: nodeAddresses, logger: logger, listeners: map[string]*listener{}}
}

// Sync opens listeners for new Service ports and closes those of removed
// ones.
func (p *Proxy) Sync() {
	svcs, err := p.services.List(labels.Everything())
	if err != nil {
		return
	}
	want := map[string]listener{}
	for _, svc := range svcs {
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			l := listener{svcNS: svc.Namespace, svcName: svc.Name, port: sp.Name, target: sp.Port}
			if sp.TargetPort.IntValue() > 0 {
				l.target = int32(sp.TargetPort.IntValue())
			}
			if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
				want[net.JoinHostPort(ip, strconv.Itoa(int(sp.Port)))] = l
			}
			if sp.NodePort != 0 {
				for _, a := range p.nodeAddresses {
					want[net.JoinHostPort(a, strconv.Itoa(int(sp.NodePort)))] = l
				}
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, l := range p.listeners {
		if w, ok := want[addr]; !ok || w.svcNS != l.svcNS || w.svcName != l.svcName || w.port != l.port {
			l.ln.Close()
			delete(p.listeners, addr)
		}
	}
	for addr, w := range want {
		if cur, ok := p.listeners[addr]; ok {
			cur.target = w.target
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			p.logger.Warn("service proxy cannot listen", "addr", addr, "service", w.svcNS+"/"+w.svcName, "err", err)
			continue
		}
		l := w
		l.ln = ln
		p.listeners[addr] = &l
		go p.serve(&l)
	}
}

// Close stops every listener.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, l := range p.listeners {
		l.ln.Close()
		delete(p.listeners, addr)
	}
}

func (p *Proxy) serve(l *listener) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(l, conn)
	}
}

// Endpoints lists the ready "ip:port" endpoints of a Service port.
func (p *Proxy) Endpoints(ns, name, portName string, fallback int32) []string {
	sel, _ := labels.Parse(discoveryv1.LabelServiceName + "=" + name)
	slices, _ := p.slices.EndpointSlices(ns).List(sel)
	var out []string
	for _, s := range slices {
		port := fallback
		for _, sp := range s.Ports {
			if sp.Port != nil && (sp.Name == nil && portName == "" || sp.Name != nil && *sp.Name == portName) {
				port = *sp.Port
			}
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				out = append(out, net.JoinHostPort(a, strconv.Itoa(int(port))))
			}
		}
	}
	sort.Strings(out)
	return out
}

// forward connects a client to a random ready endpoint, trying others if
// one refuses; with none, the connection is closed at once, as kube-proxy
// rejects connections to a Service without endpoints.
func (p *Proxy) forward(l *listener, client net.Conn) {
	defer client.Close()
	eps := p.Endpoints(l.svcNS, l.svcName, l.port, l.target)
	rand.Shuffle(len(eps), func(i, j int) { eps[i], eps[j] = eps[j], eps[i] })
	var backend net.Conn
	for _, ep := range eps {
		c, err := net.DialTimeout("tcp", ep, 2*time.Second)
		if err == nil {
			backend = c
			break
		}
	}
	if backend == nil {
		return
	}
	defer backend.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(backend, client)
	go pipe(client, backend)
	<-done
	<-done
}

// Run syncs on every change signalled on changes until ctx ends.
func (p *Proxy) Run(ctx context.Context, changes <-chan struct{}) {
	p.Sync()
	for {
		select {
		case <-ctx.Done():
			p.Close()
			return
		case <-changes:
			p.Sync()
		case <-time.After(30 * time.Second):
			p.Sync()
		}
	}
}
