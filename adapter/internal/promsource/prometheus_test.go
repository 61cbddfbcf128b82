package promsource_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// seedRule is the seed guide's rule with the rate window replaced.
func seedRule(t *testing.T, window string) *rules.Config {
	t.Helper()
	seed, err := os.ReadFile("../rules/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rcfg, err := rules.Parse("seed.yaml", []byte(strings.Replace(string(seed), "[2m]", "["+window+"]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	return rcfg
}

// TestRatesFromRealPrometheusMatchTheLoadSent scrapes three real web
// server processes, labelled as pods through file-based discovery, sends
// each a known request rate, and checks that the seed rule yields each
// pod's rate within 10%.
func TestRatesFromRealPrometheusMatchTheLoadSent(t *testing.T) {
	// Beside the package's other Prometheus tests: each mostly waits for scrapes.
	t.Parallel()
	rates := map[string]float64{"web-0": 20, "web-1": 40, "web-2": 60}
	// No Kafka: the requests below are rejected with 400 before it is
	// needed, and every request counts toward the rate.
	addrs := promtest.StartWebServers(t, []string{"web-0", "web-1", "web-2"}, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
	promURL := promtest.StartPrometheus(t, addrs, "1s", promtest.Flags...)

	// Paced load: each pod gets its own rate for the whole window. What
	// counts is what was really sent (a ticker on a busy machine may drop
	// ticks), so each request's time is kept.
	ctx, stop := context.WithTimeout(context.Background(), 25*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := map[string][]time.Time{}
	for pod, rate := range rates {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					resp, err := http.Post("http://"+addrs[pod]+"/buy", "application/json", strings.NewReader(`{}`))
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						mu.Lock()
						sent[pod] = append(sent[pod], time.Now())
						mu.Unlock()
					}
				}
			}
		}()
	}
	time.Sleep(20 * time.Second) // enough scrapes into the rate window, load still on

	// The seed rule with a 15 s window instead of 2 min: rate() averages
	// over its whole window, so with [2m] the test would wait two minutes
	// for the window to fill with load.
	rcfg := seedRule(t, "15s")
	src, err := promsource.New(promsource.ClientOptions{URL: promURL, Timeout: 10 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := src.DiscoverRule(context.Background(), rcfg.Rules[0])
	if d.Err != nil {
		t.Fatal(d.Err)
	}
	ms := d.Metrics
	if len(ms) != 1 || ms[0].Series != "flask_http_request_total" || ms[0].Name != "flask_http_request_per_second" {
		t.Fatalf("discovered %+v, want flask_http_request_per_second from flask_http_request_total", ms)
	}
	fetched := time.Now()
	res, err := src.QueryCustom(context.Background(), promsource.CustomQuery{Metric: ms[0], Resource: schema.GroupResource{Resource: "pods"}, Namespace: "itest"})
	if err != nil {
		t.Fatal(err)
	}
	samples := res.Samples
	wg.Wait()
	if len(samples) != 3 {
		t.Fatalf("samples %+v, want one per pod", samples)
	}
	for _, s := range samples {
		// The rate window ends at the newest scrape before the fetch.
		var n int
		for _, at := range sent[s.Object] {
			if at.After(s.Timestamp.Add(-15*time.Second)) && !at.After(s.Timestamp) {
				n++
			}
		}
		want := float64(n) / 15
		if d := (s.Value - want) / want; d > 0.10 || d < -0.10 {
			t.Errorf("%s: %.2f req/s, sent %.2f/s in the window (paced at %.0f) (%.1f%% off)", s.Object, s.Value, want, rates[s.Object], 100*d)
		} else {
			t.Logf("%s: %.2f req/s, sent %.2f/s in the window (paced at %.0f)", s.Object, s.Value, want, rates[s.Object])
		}
		if age := fetched.Sub(s.Timestamp); age < 0 || age > 3*time.Second {
			t.Errorf("%s: sample timestamp %v is not its newest scrape (age %s)", s.Object, s.Timestamp, age)
		}
	}
}
