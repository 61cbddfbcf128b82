// Package lifecycle runs an HTTP server until its context ends, then shuts
// it down gracefully: stop accepting, let in-flight requests finish.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// ShutdownGrace bounds how long in-flight requests may take after a stop
// is asked for and the shutdown delay has passed; with a 5 s delay both fit
// Kubernetes' default termination grace period of 30 s.
const ShutdownGrace = 20 * time.Second

// Timeouts bound what one connection can hold: a slow client (headers or
// body trickling in, or never reading the answer) cannot keep a connection
// and its goroutine forever.
type Timeouts struct {
	ReadHeader, Read, Write, Idle time.Duration
}

// DefaultTimeouts suit the services' small JSON requests and answers.
var DefaultTimeouts = Timeouts{ReadHeader: 10 * time.Second, Read: 30 * time.Second, Write: 60 * time.Second, Idle: 120 * time.Second}

// Serve serves h on ln until ctx is done, then drains. It returns nil after
// a clean drain, or the error that stopped the server.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	return ServeWith(ctx, ln, h, logger, DefaultTimeouts)
}

// ServeWith is Serve with other timeouts (tests use short ones).
func ServeWith(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger, t Timeouts) error {
	return (&Server{Timeouts: t}).Serve(ctx, ln, h, logger)
}

// Server serves HTTP until its context ends, then shuts down in two steps,
// as kube-apiserver's --shutdown-delay-duration does: for ShutdownDelay it
// keeps serving while Draining reports the stop (readiness fails, so the
// endpoints controller and the Service proxies stop sending new
// connections) and answers with "Connection: close" (so clients leave
// their kept-alive connections instead of sending into one that is about
// to close); then it stops accepting and lets in-flight requests finish.
// Without the delay a request can reach a pod in the instant between its
// listener closing and the proxy learning of it: a connection refused or
// reset, not a clear answer.
type Server struct {
	Timeouts      Timeouts
	ShutdownDelay time.Duration
	draining      atomic.Bool
}

// ErrShuttingDown is what Draining reports once a stop was asked for.
var ErrShuttingDown = errors.New("shutting down")

// Draining is a readiness check: it fails from the moment a stop is asked
// for.
func (s *Server) Draining(context.Context) error {
	if s.draining.Load() {
		return ErrShuttingDown
	}
	return nil
}

// Serve serves h on ln until ctx is done, then drains. It returns nil after
// a clean drain, or the error that stopped the server.
func (s *Server) Serve(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	t := s.Timeouts
	if t == (Timeouts{}) {
		t = DefaultTimeouts
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.draining.Store(true)
	if s.ShutdownDelay > 0 {
		logger.Info("stop asked for: still serving, not ready, while the Service forgets this pod", "shutdown_delay", s.ShutdownDelay.String())
		srv.SetKeepAlivesEnabled(false)
		select {
		case err := <-errc:
			return err
		case <-time.After(s.ShutdownDelay):
		}
	}
	logger.Info("shutting down HTTP server: draining in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Listen opens addr, naming it in the error so a port clash is obvious.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errors.New("cannot listen on " + addr + " (HTTP_ADDR): " + err.Error())
	}
	return ln, nil
}

// MaxShutdownDelay keeps the delay and the drain inside Kubernetes' default
// termination grace period of 30 s.
const MaxShutdownDelay = 10 * time.Second

// ShutdownDelayFromEnv reads SHUTDOWN_DELAY (default 0: a process started
// by hand stops at once; the manifests set 5s).
func ShutdownDelayFromEnv(getenv func(string) string) (time.Duration, error) {
	v := getenv("SHUTDOWN_DELAY")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > MaxShutdownDelay {
		return 0, fmt.Errorf("SHUTDOWN_DELAY: %q is not a duration from 0s to %s, such as 5s", v, MaxShutdownDelay)
	}
	return d, nil
}
