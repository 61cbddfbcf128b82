// Command loadgen sends POST /buy requests from concurrent clients and
// reports throughput and latency percentiles: the load behind the numbers
// in docs/BENCHMARKS.md and the load that drives the autoscaling demo.
//
//	loadgen -url http://127.0.0.1:8080/buy -c 50 -d 30s
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
	"time"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/buy", "the /buy URL")
	conc := flag.Int("c", 50, "concurrent clients")
	dur := flag.Duration("d", 30*time.Second, "how long to send")
	rate := flag.Float64("rate", 0, "total requests per second to aim for (0: as fast as the server answers)")
	users := flag.Int("users", 1000, "distinct user ids to spread purchases over")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *dur)
	defer cancel()

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
