package clustertest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// BenchmarkAdapterAtThousandPods measures the adapter as the HPA uses it,
// on the local Kubernetes with the real Prometheus: 1,000 pods (real
// objects, never scheduled) whose request counters a stand-in exporter on
// the host serves at known rates, three series per pod, scraped by the
// host Prometheus. It reports p50 and p99 of a pods/* request with a label
// selector through the aggregation layer and straight at the adapter's
// secure port (as the API server reaches it: front-proxy certificate), at
// 1 and 20 concurrent callers; Prometheus queries per request; the
// adapter's memory; and the value served for one pod against its true
// rate.
//
//	go test -run '^$' -bench AdapterAtThousandPods -benchtime 1x -timeout 30m ./e2e/clustertest/
func BenchmarkAdapterAtThousandPods(b *testing.B) {
	const pods, seriesPerPod = 1000, 3
	deploySystem(b)
	ns := namespace(b)
	ctx := context.Background()

	// The pods: real objects the adapter's watch cache sees, pinned to a
	// node that does not exist so nothing runs.
	b.Logf("creating %d pods in %s", pods, ns)
	fast := fastClient(b)
	parallel(b, pods, func(i int) error {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%04d", i), Labels: map[string]string{"app": "bench"}}, Spec: pendingPodSpec()}
		_, err := fast.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		return err
	})

	// The stand-in: pod i's counters grow at (i%50+1)/10 requests/s per
	// series.
	rate := func(i int) float64 { return float64(i%50+1) / 10 }
	standIn(b, func(w io.Writer, elapsed float64) {
		for i := range pods {
			for s := range seriesPerPod {
				fmt.Fprintf(w, "flask_http_request_total{namespace=%q,pod=\"bench-%04d\",method=\"POST\",path=\"/buy\",status=\"%d\"} %g\n", ns, i, 200+s, rate(i)*elapsed)
			}
		}
	})

	// The seed rule's rate(...[2m]) needs two minutes of samples.
	b.Logf("waiting 130 s for rate(...[2m]) to cover the stand-in's series")
	time.Sleep(130 * time.Second)

	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + ns + "/pods/*/flask_http_request_per_second"
	selector := url.Values{"labelSelector": {"app=bench"}}.Encode()
	viaAPI := aggregatedClient(b)
	direct, adapterURL := directClient(b)

	var first metricValueList
	testproc.Eventually(b, 60*time.Second, "values for every pod", func() error {
		raw, err := viaAPI(path + "?" + selector)
		if err != nil {
			return err
		}
		first = metricValueList{}
		if err := json.Unmarshal(raw, &first); err != nil {
			return err
		}
		if len(first.Items) != pods {
			return fmt.Errorf("%d values for %d pods", len(first.Items), pods)
		}
		return nil
	})
	for _, it := range first.Items {
		if it.DescribedObject.Name == "bench-0007" {
			want := rate(7) * seriesPerPod
			got := milli(it.Value)
			b.ReportMetric(got/want, "served/true-rate")
			b.Logf("pod bench-0007: served %.3f req/s, true rate %.3f (%d series at %.1f/s)", got, want, seriesPerPod, rate(7))
		}
	}

	// BENCH_ADAPTER_PROFILE=file: a CPU profile of the adapter during the
	// direct single-caller run, for finding where the time goes.
	profileFile := os.Getenv("BENCH_ADAPTER_PROFILE")
	before := adapterCounters(b)
	rssBefore := adapterRSS(b)
	total := 0
	for _, c := range []struct {
		name    string
		get     func(string) ([]byte, error)
		callers int
		each    int
	}{
		{"aggregated-1", viaAPI, 1, 200},
		{"aggregated-20", viaAPI, 20, 20},
		{"direct-1", func(p string) ([]byte, error) { return direct(adapterURL + p) }, 1, 200},
		{"direct-20", func(p string) ([]byte, error) { return direct(adapterURL + p) }, 20, 20},
	} {
		var profiled chan struct{}
		if profileFile != "" && c.name == "direct-1" {
			profiled = make(chan struct{})
			go func() {
				defer close(profiled)
				raw, err := directAs(b, "admin", "system:masters")(adapterURL + "/debug/pprof/profile?seconds=5")
				if err != nil {
					b.Error(err)
					return
				}
				_ = os.WriteFile(profileFile, raw, 0o644)
			}()
			c.each = 2000
		}
		d := measure(b, c.callers, c.each, func() error {
			raw, err := c.get(path + "?" + selector)
			if err == nil && len(raw) < pods*100 {
				err = fmt.Errorf("short answer: %.200s", raw)
			}
			return err
		})
		if profiled != nil {
			<-profiled
		}
		total += c.callers * c.each
		b.ReportMetric(ms(pct(d, 0.50)), c.name+"-p50-ms")
		b.ReportMetric(ms(pct(d, 0.99)), c.name+"-p99-ms")
		b.Logf("%s: %d requests, p50 %.2f ms, p99 %.2f ms, max %.2f ms", c.name, len(d), ms(pct(d, 0.5)), ms(pct(d, 0.99)), ms(pct(d, 1)))
	}
	after := adapterCounters(b)
	queries := after["prometheus_custom"] - before["prometheus_custom"]
	b.ReportMetric(queries/float64(total), "prometheus-queries/request")
	b.ReportMetric(float64(rssBefore)/(1<<20), "adapter-rss-MiB-before")
	b.ReportMetric(float64(adapterRSS(b))/(1<<20), "adapter-rss-MiB-after")
	b.Logf("Prometheus queries: %.0f for %d requests; adapter RSS %.1f MiB → %.1f MiB", queries, total, float64(rssBefore)/(1<<20), float64(adapterRSS(b))/(1<<20))
}

// fastClient is an API client for creating thousands of objects: the
// default client-side limit (5 QPS) would take minutes.
func fastClient(b testing.TB) kubernetes.Interface {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	rc.QPS, rc.Burst = 500, 500
	return kubernetes.NewForConfigOrDie(rc)
}

// pendingPodSpec is a pod that is never scheduled (no node has the
// label): a real object the adapter watches and the HPA counts, that
// costs the node nothing.
func pendingPodSpec() corev1.PodSpec {
	return corev1.PodSpec{
		NodeSelector: map[string]string{"purchase-system.dev/bench": "nowhere"},
		Containers:   []corev1.Container{{Name: "c", Image: "purchase-system/webserver:dev"}},
	}
}

// standIn serves, on the bridge address, the flask_http_request_total
// counters series writes (given the seconds since it started) and has the
// host Prometheus scrape them until the test ends.
func standIn(b testing.TB, series func(w io.Writer, elapsed float64)) {
	start := time.Now()
	ln, err := net.Listen("tcp", "10.88.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bw := bufio.NewWriter(w)
		fmt.Fprintln(bw, "# TYPE flask_http_request_total counter")
		series(bw, time.Since(start).Seconds())
		_ = bw.Flush()
	})}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	b.Cleanup(addScrapeTarget(b, ln.Addr().String()))
}

// addScrapeTarget adds a job scraping addr (labels kept as exposed) to
// the host Prometheus' configuration and reloads it; the returned func
// restores it. Prometheus runs without --web.enable-lifecycle (no pod may
// reload it), so the reload is a SIGHUP, and the target's presence is
// checked: a reload that did not happen fails here, not as "no values"
// later.
func addScrapeTarget(b testing.TB, addr string) func() {
	dir := filepath.Join(repoRoot, ".cache", "infra", "prometheus")
	file := filepath.Join(dir, "prometheus.yml")
	orig, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	job := fmt.Sprintf("\n  - job_name: bench-stand-in\n    honor_labels: true\n    static_configs: [{targets: [%q]}]\n", addr)
	if err := os.WriteFile(file, append(append([]byte{}, orig...), job...), 0o644); err != nil {
		b.Fatal(err)
	}
	reload := func(want bool) {
		raw, err := os.ReadFile(filepath.Join(dir, "pid"))
		if err != nil {
			b.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			b.Fatal(err)
		}
		testproc.Eventually(b, 30*time.Second, fmt.Sprintf("Prometheus scraping %s: %t", addr, want), func() error {
			resp, err := http.Get(prometheusURL + "/api/v1/targets?state=active")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if has := strings.Contains(string(raw), addr); has != want {
				return fmt.Errorf("target %s listed: %t", addr, has)
			}
			return nil
		})
	}
	reload(true)
	return func() {
		_ = os.WriteFile(file, orig, 0o644)
		reload(false)
	}
}

// aggregatedClient GETs through the API server as the admin.
func aggregatedClient(b testing.TB) func(string) ([]byte, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 10000, 10000
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return func(p string) ([]byte, error) {
		resp, err := hc.Get(cfg.Host + p)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%d %.300s", resp.StatusCode, raw)
		}
		return raw, err
	}
}

// directClient GETs from the adapter's secure port as the aggregation
// layer does: the front-proxy client certificate, the caller's identity in
// X-Remote-User (the HPA controller's service account).
func directClient(b testing.TB) (func(string) ([]byte, error), string) {
	pods, err := readyPods(context.Background(), "monitoring", "app=purchase-metrics-adapter")
	if err != nil || len(pods) != 1 {
		b.Fatalf("adapter pod: %v %d", err, len(pods))
	}
	return directAs(b, "system:serviceaccount:kube-system:horizontal-pod-autoscaler", "system:serviceaccounts"), "https://" + pods[0].Status.PodIP + ":6443"
}

// directAs is a client of the adapter's secure port for user in group.
func directAs(b testing.TB, user, group string) func(string) ([]byte, error) {
	pki := filepath.Join(repoRoot, ".cache", "devcluster", "pki")
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "front-proxy-client.crt"), filepath.Join(pki, "front-proxy-client.key"))
	if err != nil {
		b.Fatal(err)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 100,
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, RootCAs: x509.NewCertPool()}}}
	return func(u string) ([]byte, error) {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("X-Remote-User", user)
		req.Header.Set("X-Remote-Group", group)
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%d %.300s", resp.StatusCode, raw)
		}
		return raw, err
	}
}

// measure runs callers goroutines each doing each requests.
func measure(b testing.TB, callers, each int, do func() error) []time.Duration {
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, each)
			for range each {
				t0 := time.Now()
				if err := do(); err != nil {
					b.Error(err)
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			all = append(all, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(all)
	return all
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(p*float64(len(d))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// adapterCounters reads the adapter's backend query counts from its
// self-metrics: backend_kind → count.
func adapterCounters(b testing.TB) map[string]float64 {
	pods, err := readyPods(context.Background(), "monitoring", "app=purchase-metrics-adapter")
	if err != nil || len(pods) != 1 {
		b.Fatalf("adapter pod: %v", err)
	}
	resp, err := http.Get("http://" + pods[0].Status.PodIP + ":9102/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "adapter_backend_query_duration_seconds_count{") {
			continue
		}
		backend := between(l, `backend="`, `"`)
		kind := between(l, `kind="`, `"`)
		v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		out[backend+"_"+kind] = v
	}
	return out
}

// adapterRSS is the adapter pod's resident memory.
func adapterRSS(b testing.TB) int64 { return rssOf(b, ourAdapterPID(b)) }

// rssOf is a process's resident memory, from /proc.
func rssOf(b testing.TB, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
