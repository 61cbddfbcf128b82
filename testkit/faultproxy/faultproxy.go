// Package faultproxy is a TCP proxy a test puts between a program and a
// dependency (the database, a broker) to take the dependency away and
// bring it back: Cut closes every connection and refuses new ones,
// Restore lets them through again, Switch sends new connections to
// another target while the old ones go silent. The program sees what it
// would see if the dependency went down, or was replaced behind the same
// address.
package faultproxy

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards connections on Addr to the target.
type Proxy struct {
	Addr string
	ln   net.Listener

	mu       sync.Mutex
	target   string
	cut      bool
	links    map[net.Conn]net.Conn // client end → target end
	silenced map[net.Conn]bool
}

// Start listens on a free loopback port and forwards to target until the
// test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln,
		links: map[net.Conn]net.Conn{}, silenced: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.Cut() })
	return p
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut, target := p.cut, p.target
		p.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		go p.forward(c, target)
	}
}

func (p *Proxy) forward(c net.Conn, target string) {
	up, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.cut || p.target != target {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.links[c] = up
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	up.Close()
	p.mu.Lock()
	silenced := p.silenced[c]
	p.mu.Unlock()
	if silenced {
		// What the client wrote goes nowhere and nothing comes back,
		// until the client gives up on the connection.
		<-done
		_, _ = io.Copy(io.Discard, c)
	}
	c.Close()
	p.mu.Lock()
	delete(p.links, c)
	delete(p.silenced, c)
	p.mu.Unlock()
}

// Cut closes every open connection and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c, up := range p.links {
		c.Close()
		up.Close()
	}
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Switch sends new connections to target. The open ones go silent, as a
// Kubernetes Service's connections do when their endpoint is gone and
// another takes the address: no reset reaches the client, its requests
// get no answer, and it finds out only by its own timeouts.
func (p *Proxy) Switch(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
	for c, up := range p.links {
		p.silenced[c] = true
		up.Close()
	}
}
