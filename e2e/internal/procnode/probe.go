package procnode

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type probeKind string

const (
	readiness probeKind = "Readiness"
	liveness  probeKind = "Liveness"
	startup   probeKind = "Startup"
)

// probeLoop runs one probe of a container for as long as ctx lives, the
// way the kubelet's prober does: after initialDelaySeconds, every
// periodSeconds, with success and failure thresholds. Readiness drives the
// container's (and so the pod's) Ready condition; a liveness failure
// restarts the container; until a startup probe succeeds, the other two
// wait.
func (c *container) probeLoop(ctx context.Context, kind probeKind, p *corev1.Probe) {
	period := seconds(p.PeriodSeconds, 10)
	timeout := seconds(p.TimeoutSeconds, 1)
	successThreshold, failureThreshold := int(max(p.SuccessThreshold, 1)), int(max(p.FailureThreshold, 3))
	var successes, failures int
	var lastStart time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(period, time.Second)):
		}
		c.mu.Lock()
		running, started, startupDone := c.proc != nil, c.startedAt, c.startupDone
		c.mu.Unlock()
		if !running || (kind != startup && !startupDone) || (kind == startup && startupDone) {
			continue
		}
		if started != lastStart { // a new process: counters start over
			lastStart, successes, failures = started, 0, 0
		}
		if time.Since(started) < time.Duration(p.InitialDelaySeconds)*time.Second {
			continue
		}
		err := c.probeOnce(ctx, p, timeout)
		if err == nil {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
			c.pod.node.logger.Debug("probe failed", "pod", c.pod.key, "container", c.spec.Name, "probe", kind, "err", err)
			c.pod.node.event(c.pod.spec, "Warning", "Unhealthy", fmt.Sprintf("%s probe failed: %v", kind, err))
		}
		switch kind {
		case readiness:
			c.mu.Lock()
			was := c.ready
			if successes >= successThreshold {
				c.ready = true
			} else if failures >= failureThreshold {
				c.ready = false
			}
			now := c.ready
			c.mu.Unlock()
			if was != now {
				c.pod.changed()
			}
		case liveness:
			if failures >= failureThreshold {
				failures = 0
				c.killForLiveness(c.pod.grace())
			}
		case startup:
			if successes >= successThreshold {
				c.mu.Lock()
				c.startupDone = true
				c.mu.Unlock()
				c.pod.changed()
			} else if failures >= failureThreshold {
				failures = 0
				c.killForLiveness(c.pod.grace())
			}
		}
		// Sleep the rest of the period (the loop waits at most a second
		// at its top so a fresh process is probed promptly).
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(period-time.Second, 0)):
		}
	}
}

func seconds(n int32, def int) time.Duration {
	if n <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(n) * time.Second
}

// probeOnce performs one httpGet or tcpSocket probe against the pod IP.
func (c *container) probeOnce(ctx context.Context, p *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host := c.pod.ip.String()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := c.resolvePort(g.Port)
		if err != nil {
			return err
		}
		if g.Host != "" {
			host = g.Host
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
		if i := strings.IndexByte(g.Path, '?'); i >= 0 {
			u.Path, u.RawQuery = g.Path[:i], g.Path[i+1:]
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/process-node")
		for _, h := range g.HTTPHeaders {
			req.Header.Set(h.Name, h.Value)
		}
		resp, err := probeClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := c.resolvePort(p.TCPSocket.Port)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		return fmt.Errorf("exec probes are not supported by the process node: use httpGet or tcpSocket")
	case p.GRPC != nil:
		return fmt.Errorf("grpc probes are not supported by the process node: use httpGet or tcpSocket")
	}
	return fmt.Errorf("probe has no handler")
}

// probeClient follows the kubelet: no keep-alive, TLS not verified.
var probeClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

func (c *container) resolvePort(p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container has no port named %q", p.StrVal)
}
