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

// Serve serves h on ln until ctx is done, then drains. It returns nil after
// a clean drain, or the error that stopped the server.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	srv := &http.Server{
		Handler: h,
		// A slow client (headers or body trickling in, or never reading
		// the answer) cannot hold a connection and its goroutine forever.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
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
