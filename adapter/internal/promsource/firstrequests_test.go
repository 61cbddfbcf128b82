package promsource_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// promGet decodes the data of a Prometheus API answer.
func promGet(t *testing.T, promURL, path string, data any) {
	t.Helper()
	resp, err := http.Get(promURL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		t.Fatalf("GET %s: %v %s", path, err, body.Error)
	}
	if err := json.Unmarshal(body.Data, data); err != nil {
		t.Fatal(err)
	}
}

// lastScrapes returns when Prometheus last scraped each pod.
func lastScrapes(t *testing.T, promURL string) map[string]time.Time {
	t.Helper()
	var d struct {
		ActiveTargets []struct {
			Labels     map[string]string `json:"labels"`
			LastScrape time.Time         `json:"lastScrape"`
			Health     string            `json:"health"`
		} `json:"activeTargets"`
	}
	promGet(t, promURL, "/api/v1/targets", &d)
	out := map[string]time.Time{}
	for _, at := range d.ActiveTargets {
		if at.Health == "up" {
			out[at.Labels["pod"]] = at.LastScrape
		}
	}
	return out
}

// rawValues returns the raw samples of a series over the last minute.
func rawValues(t *testing.T, promURL, selector string) []string {
	t.Helper()
	var d struct {
		Result []struct {
			Values [][2]any `json:"values"`
		} `json:"result"`
	}
	promGet(t, promURL, "/api/v1/query?query="+url.QueryEscape(selector+"[1m]"), &d)
	var out []string
	for _, s := range d.Result {
		for _, v := range s.Values {
			out = append(out, v[1].(string))
		}
	}
	return out
}

// fetchSeedRate discovers the seed rule with the given window and returns
// what the adapter would serve for each pod in namespace itest.
func fetchSeedRate(t *testing.T, promURL, window string) (map[string]store.Sample, error) {
	t.Helper()
	src, err := promsource.New(promsource.ClientOptions{URL: promURL, Timeout: 10 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := src.DiscoverRule(context.Background(), seedRule(t, window).Rules[0])
	if d.Err != nil {
		return nil, d.Err
	}
	if len(d.Metrics) != 1 || d.Metrics[0].Name != "flask_http_request_per_second" {
		return nil, fmt.Errorf("discovered %+v, want flask_http_request_per_second", d)
	}
	res, err := src.QueryCustom(context.Background(), promsource.CustomQuery{Metric: d.Metrics[0], Resource: schema.GroupResource{Resource: "pods"}, Namespace: "itest"})
	if err != nil {
		return nil, err
	}
	out := map[string]store.Sample{}
	for _, s := range res.Samples {
		out[s.Object] = s
	}
	return out, nil
}

// TestIdlePodsAreDiscoveredAndRead0: a web server that has served nothing
// yet is already listed and read as 0 req/s — an idle system gives the HPA
// a value, not <unknown>.
func TestIdlePodsAreDiscoveredAndRead0(t *testing.T) {
	// Beside the package's other Prometheus tests: each mostly waits for scrapes.
	t.Parallel()
	addrs := promtest.StartWebServers(t, []string{"web-idle"}, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
	promURL := promtest.StartPrometheus(t, addrs, "1s", promtest.Flags...)
	testproc.Eventually(t, 30*time.Second, "an idle pod read as 0", func() error {
		got, err := fetchSeedRate(t, promURL, "15s")
		if err != nil {
			return err
		}
		s, ok := got["web-idle"]
		if !ok || s.Value != 0 || time.Since(s.Timestamp) > 5*time.Second {
			return fmt.Errorf("served %+v, want web-idle at 0 with a fresh timestamp", got)
		}
		return nil
	})
}

// TestFirstBurstBetweenTwoScrapesIsCounted sends one burst of requests to
// each of two pods between two scrapes. On web-ok they answer 201, whose
// series the web server exports at 0 from its start; on web-bad they
// answer 400, a series that first appears with the burst, already at its
// full count. Both bursts must be served as a rate: without the zero series
// and without Prometheus storing a zero at each counter's creation time,
// rate() sees no increase and the adapter serves 0 for a pod that just
// answered a hundred requests.
func TestFirstBurstBetweenTwoScrapesIsCounted(t *testing.T) {
	// Beside the package's other Prometheus tests: each mostly waits for scrapes.
	t.Parallel()
	_, kafkaAddr := testkafka.Fake(t, "purchases")
	addrs := promtest.StartWebServers(t, []string{"web-ok", "web-bad"}, "KAFKA_BOOTSTRAP_SERVERS="+kafkaAddr, "KAFKA_EXTRA_CONFIG="+testkafka.FastClientConfig)
	for _, a := range addrs {
		testproc.WaitHTTP(t, "http://"+a+"/readyz", 200, 30*time.Second)
	}
	promURL := promtest.StartPrometheus(t, addrs, "2s", promtest.Flags...)

	// Let the window fill with scrapes of the idle pods, then wait for a
	// scrape of both and send the bursts at once, well before the next one.
	const window, burst = 30 * time.Second, 100
	time.Sleep(window)
	before := lastScrapes(t, promURL)
	testproc.Eventually(t, 10*time.Second, "a fresh scrape of both pods", func() error {
		now := lastScrapes(t, promURL)
		for _, pod := range []string{"web-ok", "web-bad"} {
			if !now[pod].After(before[pod]) {
				return fmt.Errorf("%s not scraped since %v", pod, before[pod])
			}
		}
		return nil
	})
	bodies := map[string]string{
		"web-ok":  `{"username":"burst","userid":"u1","price":1}`,
		"web-bad": `{"username":"burst"}`,
	}
	wantStatus := map[string]int{"web-ok": 201, "web-bad": 400}
	var wg sync.WaitGroup
	errs := make(chan error, 2*burst)
	for pod, body := range bodies {
		for range burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Post("http://"+addrs[pod]+"/buy", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != wantStatus[pod] {
					errs <- fmt.Errorf("%s: status %d, want %d", pod, resp.StatusCode, wantStatus[pod])
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Ten more scrapes, then the adapter's value for each pod must be the
	// burst spread over the rule's window.
	time.Sleep(20 * time.Second)
	for pod, sel := range map[string]string{
		"web-ok":  `flask_http_request_total{pod="web-ok",status="201"}`,
		"web-bad": `flask_http_request_total{pod="web-bad",status="400"}`,
	} {
		// The burst fell between two scrapes: the first non-zero sample
		// holds all of it.
		vals := rawValues(t, promURL, sel)
		for _, v := range vals {
			if v != "0" {
				if v != fmt.Sprint(burst) {
					t.Fatalf("%s: samples %v: the burst was split across scrapes; the test did not test what it says", pod, vals)
				}
				break
			}
		}
		t.Logf("%s: raw samples %v", pod, vals)
	}
	got, err := fetchSeedRate(t, promURL, "30s")
	if err != nil {
		t.Fatal(err)
	}
	want := float64(burst) / window.Seconds()
	for _, pod := range []string{"web-ok", "web-bad"} {
		v := got[pod].Value
		// rate() extrapolates the window's ends by up to one scrape
		// interval of twenty seconds of samples.
		if v < want*0.9 || v > want*1.2 {
			t.Errorf("%s: served %.3f req/s, want %.3f (%d requests over %s)", pod, v, want, burst, window)
		} else {
			t.Logf("%s: served %.3f req/s for %d requests over %s", pod, v, burst, window)
		}
	}
}
