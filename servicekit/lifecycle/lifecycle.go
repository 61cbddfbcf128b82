// Package lifecycle runs an HTTP server until its context ends, then shuts
// it down gracefully: stop accepting, let in-flight requests finish.
package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// ShutdownGrace bounds how long in-flight requests may take after a stop
// is asked for; Kubernetes' default termination grace period is 30 s.
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
