package lifecycle_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/servicekit/lifecycle"
)

// During the shutdown delay the server still answers, fails its readiness
// and asks clients to leave their connections; after it, it stops.
func TestShutdownDelayKeepsServingWhileNotReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &lifecycle.Server{ShutdownDelay: 2 * time.Second}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := srv.Draining(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, h, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	url := "http://" + ln.Addr().String() + "/"

	resp, err := http.Get(url)
	if err != nil || resp.StatusCode != 200 || resp.Close {
		t.Fatalf("before the stop: %v %v, want 200 on a kept-alive connection", resp, err)
	}
	resp.Body.Close()

	stop()
	time.Sleep(200 * time.Millisecond)
	resp, err = http.Get(url)
	if err != nil {
		t.Fatalf("during the shutdown delay the server must still answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readiness during the delay = %d, want 503", resp.StatusCode)
	}
	if !resp.Close {
		t.Fatal("answers during the delay must carry Connection: close")
	}
	select {
	case err := <-done:
		t.Fatalf("server stopped before its delay: %v", err)
	default:
	}

	if err := <-done; err != nil {
		t.Fatalf("Serve = %v, want nil after a clean drain", err)
	}
	if _, err := http.Get(url); err == nil {
		t.Fatal("the server still answers after the drain")
	}
}

func TestShutdownDelayFromEnv(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	if d, err := lifecycle.ShutdownDelayFromEnv(env("")); d != 0 || err != nil {
		t.Fatalf("unset = %v %v, want 0", d, err)
	}
	if d, err := lifecycle.ShutdownDelayFromEnv(env("5s")); d != 5*time.Second || err != nil {
		t.Fatalf("5s = %v %v", d, err)
	}
	for _, bad := range []string{"5", "-1s", "1m"} {
		if _, err := lifecycle.ShutdownDelayFromEnv(env(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
