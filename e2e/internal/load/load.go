// Package load sends POST /buy requests at a fixed arrival rate: open-loop,
// as independent users arrive, not a fixed number of clients that wait for
// each answer (which slow down exactly when the server does and hide it).
// It keeps every acknowledged purchase, so a test can check that each one
// was stored exactly once.
package load

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Purchase is what the web server acknowledged.
type Purchase struct {
	ID     string `json:"id"`
	UserID string `json:"userid"`
	// Nonce is the request's own mark, sent as its username (a field the
	// service stores as given): one request, one nonce, so a purchase
	// stored twice — under two ids — shows as two rows with one nonce,
	// which counting by id (the primary key) could never find.
	Nonce string `json:"username"`
	// AckedAt is when the 201 arrived.
	AckedAt time.Time `json:"-"`
}

// Generator sends purchases to URL at Rate per second.
type Generator struct {
	URL  string
	Rate float64
	// Users is how many distinct user ids the purchases are spread over;
	// UserPrefix makes them unique to a run, so a check reads back only
	// this run's purchases.
	Users      int
	UserPrefix string
	// MaxInFlight bounds the requests waiting for an answer; an arrival
	// beyond it is counted as dropped, not queued (queueing would turn the
	// open loop into a closed one).
	MaxInFlight int
	Client      *http.Client
	// OnAnswer, when set, is told of every request: when it was sent and
	// its status (0: no answer). It is called from many goroutines.
	OnAnswer func(sent time.Time, status int)

	offered, acked, failed, dropped atomic.Int64

	mu       sync.Mutex
	statuses map[int]int
	acks     []Purchase
	errs     []string
}

// Counts is a snapshot of what happened so far.
type Counts struct {
	Offered, Acked, Failed, Dropped int64
}

// NewClient is an HTTP client for load: every request on a new connection,
// as from many independent users. Reused connections would pin the load to
// the pods that existed when it started: a Service balances connections,
// not requests, and new pods would never get any.
func NewClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// Run sends until ctx ends and waits for the answers in flight.
func (g *Generator) Run(ctx context.Context) {
	if g.Client == nil {
		g.Client = NewClient()
	}
	if g.MaxInFlight == 0 {
		g.MaxInFlight = 2000
	}
	if g.Users == 0 {
		g.Users = 1000
	}
	g.mu.Lock()
	if g.statuses == nil {
		g.statuses = map[int]int{}
	}
	g.mu.Unlock()
	slots := make(chan struct{}, g.MaxInFlight)
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / g.Rate)
	start := time.Now()
	for n := int64(0); ; n++ {
		// Arrival n is due at start + n*interval, whatever happened to the
		// earlier ones: a late timer sends the missed arrivals at once.
		if d := time.Until(start.Add(time.Duration(n) * interval)); d > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return
			case <-time.After(d):
			}
		} else if ctx.Err() != nil {
			wg.Wait()
			return
		}
		g.offered.Add(1)
		select {
		case slots <- struct{}{}:
		default:
			g.dropped.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			g.send(n)
		}()
	}
}

func (g *Generator) send(n int64) {
	user := fmt.Sprintf("%s%d", g.UserPrefix, n%int64(g.Users))
	body := fmt.Sprintf(`{"username":%q,"userid":%q,"price":%d}`, Nonce(g.UserPrefix, n), user, 1+n%100)
	// Requests already sent are answered even after the load stops: the
	// answer says whether the purchase was acknowledged.
	sent := time.Now()
	resp, err := g.Client.Post(g.URL, "application/json", bytes.NewBufferString(body))
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	if g.OnAnswer != nil {
		defer func() { g.OnAnswer(sent, status) }()
	}
	if err != nil {
		g.failed.Add(1)
		g.note(0, err.Error())
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		g.failed.Add(1)
		g.note(resp.StatusCode, string(b))
		return
	}
	var p Purchase
	if err := json.Unmarshal(b, &p); err != nil || p.ID == "" {
		g.failed.Add(1)
		g.note(resp.StatusCode, "acknowledged without a purchase id: "+string(b))
		return
	}
	p.AckedAt = time.Now()
	g.acked.Add(1)
	g.mu.Lock()
	g.statuses[resp.StatusCode]++
	g.acks = append(g.acks, p)
	g.mu.Unlock()
}

// Nonce is the mark of request n of a run (its users' prefix names the
// run), sent as the purchase's username.
func Nonce(runPrefix string, n int64) string { return fmt.Sprintf("nonce-%s%d", runPrefix, n) }

func (g *Generator) note(status int, msg string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.statuses[status]++
	if len(g.errs) < 20 {
		g.errs = append(g.errs, fmt.Sprintf("%d: %.200s", status, msg))
	}
}

// Counts returns the counters so far.
func (g *Generator) Counts() Counts {
	return Counts{Offered: g.offered.Load(), Acked: g.acked.Load(), Failed: g.failed.Load(), Dropped: g.dropped.Load()}
}

// Acknowledged returns every acknowledged purchase.
func (g *Generator) Acknowledged() []Purchase {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Purchase(nil), g.acks...)
}

// Statuses counts answers by HTTP status (0: no answer).
func (g *Generator) Statuses() map[int]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[int]int, len(g.statuses))
	for k, v := range g.statuses {
		out[k] = v
	}
	return out
}

// Errors returns the first failures, for a report.
func (g *Generator) Errors() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.errs...)
}
