// Command loadgen sends POST /buy requests and reports what came back.
//
// Closed loop, the load behind the throughput numbers in
// docs/BENCHMARKS.md: -c clients, each sending its next request when the
// last was answered.
//
//	loadgen -url http://127.0.0.1:8080/buy -c 50 -d 30s
//
// Open loop, the load that makes the system scale (make load): purchases
// arrive at -arrival-rate per second whatever the answers' speed, each on a
// new connection as from many users; with -watch it prints, every few
// seconds, what each HPA sees and does.
//
//	loadgen -url http://localhost:30080/buy -arrival-rate 350 -d 5m -watch .cache/devcluster/kubeconfig
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/autoscaling"
	"github.com/purchase-system/purchase-system/e2e/internal/load"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/buy", "the /buy URL")
	conc := flag.Int("c", 50, "concurrent clients")
	dur := flag.Duration("d", 30*time.Second, "how long to send")
	rate := flag.Float64("rate", 0, "total requests per second to aim for (0: as fast as the server answers)")
	users := flag.Int("users", 1000, "distinct user ids to spread purchases over")
	arrival := flag.Float64("arrival-rate", 0, "open loop: purchases arriving per second, each on a new connection (-c and -rate are then unused)")
	watch := flag.String("watch", "", "with -arrival-rate: kubeconfig of the cluster whose HPAs to print every few seconds")
	namespace := flag.String("namespace", "purchase-system", "namespace of the HPAs -watch prints")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()

	if *arrival > 0 {
		if err := openLoop(ctx, *url, *arrival, *users, *watch, *namespace); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		return
	}

	r := run(ctx, *url, *conc, *rate, *users)
	r.print(os.Stdout, *conc)
	if r.ok == 0 {
		os.Exit(1)
	}
}

type result struct {
	ok, failed int
	statuses   map[int]int
	latencies  []time.Duration
	elapsed    time.Duration
}

func run(ctx context.Context, url string, conc int, rate float64, users int) result {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}, Timeout: 30 * time.Second}
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	var seq atomic.Int64
	var mu sync.Mutex
	res := result{statuses: map[int]int{}}
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			st := map[int]int{}
			for ctx.Err() == nil {
				if tick != nil {
					select {
					case <-tick:
					case <-ctx.Done():
						continue
					}
				}
				n := seq.Add(1)
				body := fmt.Sprintf(`{"username":"load","userid":"user-%d","price":%d}`, n%int64(users), 1+n%100)
				t0 := time.Now()
				resp, err := client.Post(url, "application/json", bytes.NewBufferString(body))
				if err != nil {
					if ctx.Err() == nil {
						st[0]++
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				st[resp.StatusCode]++
				if resp.StatusCode == http.StatusCreated {
					lat = append(lat, time.Since(t0))
				}
			}
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			for k, v := range st {
				res.statuses[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	for code, n := range res.statuses {
		if code == http.StatusCreated {
			res.ok += n
		} else {
			res.failed += n
		}
	}
	slices.Sort(res.latencies)
	return res
}

func (r result) pct(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(p*float64(len(r.latencies))))]
}

func (r result) print(w io.Writer, conc int) {
	fmt.Fprintf(w, "clients:        %d\n", conc)
	fmt.Fprintf(w, "duration:       %.1fs\n", r.elapsed.Seconds())
	fmt.Fprintf(w, "acknowledged:   %d (201)\n", r.ok)
	fmt.Fprintf(w, "failed:         %d %v\n", r.failed, r.statuses)
	fmt.Fprintf(w, "throughput:     %.0f acknowledged/s\n", float64(r.ok)/r.elapsed.Seconds())
	fmt.Fprintf(w, "latency p50:    %s\n", r.pct(0.50).Round(10*time.Microsecond))
	fmt.Fprintf(w, "latency p99:    %s\n", r.pct(0.99).Round(10*time.Microsecond))
	fmt.Fprintf(w, "latency max:    %s\n", r.pct(1).Round(10*time.Microsecond))
}

// openLoop offers purchases at a fixed rate and, every 5 s, prints the
// load's counts and, with a kubeconfig, one line per HPA.
func openLoop(ctx context.Context, url string, rate float64, users int, kubeconfig, ns string) error {
	var client kubernetes.Interface
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return fmt.Errorf("-watch: %w", err)
		}
		client = kubernetes.NewForConfigOrDie(cfg)
	}
	g := &load.Generator{URL: url, Rate: rate, Users: users, UserPrefix: "load-"}
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	fmt.Printf("offering %.0f purchases/s to %s (open loop; Ctrl-C stops)\n", rate, url)
	start := time.Now()
	prev := g.Counts()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			c := g.Counts()
			fmt.Printf("\ndone after %s: %d offered, %d acknowledged (201), %d failed, %d dropped; answers %v\n",
				time.Since(start).Round(time.Second), c.Offered, c.Acked, c.Failed, c.Dropped, g.Statuses())
			for _, e := range g.Errors() {
				fmt.Println("  ", e)
			}
			return nil
		case <-tick.C:
		}
		c := g.Counts()
		fmt.Printf("\n%4.0fs  acknowledged %.0f/s  failed %.0f/s  dropped %.0f/s\n", time.Since(start).Seconds(),
			float64(c.Acked-prev.Acked)/5, float64(c.Failed-prev.Failed)/5, float64(c.Dropped-prev.Dropped)/5)
		prev = c
		if client == nil {
			continue
		}
		rctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		s, err := autoscaling.Read(rctx, client, ns)
		cancel()
		if err != nil {
			fmt.Println("      ", err)
			continue
		}
		for _, l := range s.Lines() {
			fmt.Println("      ", l)
		}
	}
}
