package load

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func server(t *testing.T, delay time.Duration) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		time.Sleep(delay)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":"p-%d","userid":"u"}`, i)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// The arrival rate does not depend on how fast the server answers: a slow
// server gets as many requests as a fast one.
func TestArrivalsDoNotWaitForAnswers(t *testing.T) {
	for _, delay := range []time.Duration{0, 300 * time.Millisecond} {
		srv, got := server(t, delay)
		g := &Generator{URL: srv.URL, Rate: 200}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		g.Run(ctx)
		cancel()
		c := g.Counts()
		if c.Offered < 180 || c.Offered > 202 {
			t.Errorf("delay %s: offered %d in 1 s at 200/s", delay, c.Offered)
		}
		if c.Acked != got.Load() || c.Acked != int64(len(g.Acknowledged())) || c.Dropped != 0 || c.Failed != 0 {
			t.Errorf("delay %s: counts %+v, server saw %d, %d acknowledged kept", delay, c, got.Load(), len(g.Acknowledged()))
		}
	}
}

// Past MaxInFlight an arrival is dropped and counted, not queued.
func TestArrivalsBeyondInFlightAreDropped(t *testing.T) {
	srv, _ := server(t, 2*time.Second)
	g := &Generator{URL: srv.URL, Rate: 100, MaxInFlight: 10}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	g.Run(ctx)
	cancel()
	c := g.Counts()
	if c.Acked != 10 || c.Dropped != c.Offered-10 || c.Dropped < 30 {
		t.Fatalf("counts %+v: want 10 acknowledged and the rest dropped", c)
	}
}
