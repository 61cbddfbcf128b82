package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// BenchmarkThousandHPAs puts 1,000 HPAs on one adapter through the real
// HPA controller and measures how often each one is actually evaluated —
// the aim is every HPA every 15 s — with what the adapter costs. Each HPA
// scales a ReplicaSet of its own whose one pod stays Pending (a node
// selector no node has: the HPA still asks), on two metrics: the seed's
// pods metric over a synthetic series per pod in the real Prometheus, and
// the Kafka lag of a consumer group of its own. Each HPA's selectors are
// its own, so the API server's audit log of the metrics APIs names the HPA
// in every request: the intervals between its requests are its
// evaluations, and each request's time is what the HPA waited.
//
// With the controller tuned (so that it is not the limit) it sweeps 10,
// 100 and 1,000 HPAs, with the adapter's CPU, memory and backend requests
// at each; then a noisy namespace asks for ever new selectors beside the
// 1,000 (its budget must keep the others' evaluations as they were); then
// the controller as it ships (its flags' defaults); then the custom
// metrics API served by prometheus-adapter v0.12 instead (pods metric
// only: it has no lag), on the same HPAs and Prometheus.
//
//	make bench-hpa    (or:)
//	go test -run '^$' -bench ThousandHPAs -benchtime 1x -timeout 60m ./e2e/clustertest/
//
// HPA_BENCH_HPAS (default 1000) and HPA_BENCH_WINDOW (default 2m, halved
// for the smaller sizes) size a run.
func BenchmarkThousandHPAs(b *testing.B) {
	hpas := envInt("HPA_BENCH_HPAS", 1000)
	window := 2 * time.Minute
	if v := os.Getenv("HPA_BENCH_WINDOW"); v != "" {
		window, _ = time.ParseDuration(v)
	}
	const perNamespace = 100 // the adapter's per-namespace budget is 250 queries
	deploySystem(b)
	ctx := context.Background()
	fast := fastClient(b)

	// The scale targets and their pods.
	var namespaces []string
	for i := 0; i < hpas; i += perNamespace {
		namespaces = append(namespaces, namespace(b))
	}
	nsOf := func(i int) string { return namespaces[i/perNamespace] }
	name := func(i int) string { return fmt.Sprintf("hpa-%04d", i) }
	b.Logf("creating %d ReplicaSets (one Pending pod each) in %d namespaces", hpas, len(namespaces))
	parallel(b, hpas, func(i int) error {
		labels := map[string]string{"app": name(i)}
		rs := &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: name(i), Labels: labels},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: ptr.To[int32](1),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       pendingPodSpec(),
				},
			},
		}
		_, err := fast.AppsV1().ReplicaSets(nsOf(i)).Create(ctx, rs, metav1.CreateOptions{})
		return err
	})
	podOf := make([]string, hpas)
	testproc.Eventually(b, 10*time.Minute, "a pod for every ReplicaSet", func() error {
		n := 0
		for _, ns := range namespaces {
			pods, err := fast.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, p := range pods.Items {
				i, err := strconv.Atoi(strings.TrimPrefix(p.Labels["app"], "hpa-"))
				if err == nil && i < hpas {
					podOf[i] = p.Name
				}
			}
		}
		for _, p := range podOf {
			if p != "" {
				n++
			}
		}
		if n < hpas {
			return fmt.Errorf("%d of %d pods", n, hpas)
		}
		return nil
	})

	// The pods' request counters: pod i at (i%50+1)/10 requests/s.
	standIn(b, func(w io.Writer, elapsed float64) {
		for i := range hpas {
			fmt.Fprintf(w, "flask_http_request_total{namespace=%q,pod=%q,method=\"POST\",path=\"/buy\",status=\"200\"} %g\n", nsOf(i), podOf[i], float64(i%50+1)/10*elapsed)
		}
	})

	// Each HPA's consumer group, with lag on a shared topic; the groups
	// granted to the bench namespaces in the adapter's config.
	const topic = "hpa-bench-lag"
	lagFixture(b, topic, hpas)
	grantLag(b, topic)

	createHPAs := func(from, to int) {
		b.Logf("creating HPAs %d to %d", from, to-1)
		parallel(b, to-from, func(j int) error {
			i := from + j
			h := &autoscalingv2.HorizontalPodAutoscaler{
				ObjectMeta: metav1.ObjectMeta{Name: name(i)},
				Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
					ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name(i)},
					MinReplicas:    ptr.To[int32](1), MaxReplicas: 1,
					Metrics: []autoscalingv2.MetricSpec{
						{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricSource{
							Metric: autoscalingv2.MetricIdentifier{Name: "flask_http_request_per_second"},
							Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: resource.NewQuantity(1000, resource.DecimalSI)},
						}},
						{Type: autoscalingv2.ExternalMetricSourceType, External: &autoscalingv2.ExternalMetricSource{
							Metric: autoscalingv2.MetricIdentifier{Name: "kafka_consumergroup_lag", Selector: &metav1.LabelSelector{
								MatchLabels: map[string]string{"consumergroup": groupName(i), "topic": topic}}},
							Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: resource.NewQuantity(1000000, resource.DecimalSI)},
						}},
					},
				},
			}
			_, err := fast.AutoscalingV2().HorizontalPodAutoscalers(nsOf(i)).Create(ctx, h, metav1.CreateOptions{})
			return err
		})
	}
	report := func(label string, r hpaRound) {
		b.ReportMetric(r.meanInterval.Seconds(), label+"-interval-mean-s")
		b.ReportMetric(r.intervalP99.Seconds(), label+"-interval-p99-s")
		b.ReportMetric(100*r.within, label+"-intervals-within-1s-%")
		b.ReportMetric(ms(r.latencyP50), label+"-request-p50-ms")
		b.ReportMetric(ms(r.latencyP99), label+"-request-p99-ms")
		b.ReportMetric(r.adapterCPU, label+"-adapter-cores")
		b.ReportMetric(r.adapterRSSMiB, label+"-adapter-rss-MiB")
		b.Logf("%s: %s", label, r)
	}
	ours := func(label string, n int, w time.Duration) {
		before := adapterCounters(b)
		r := measureHPAs(b, namespaces, n, w, ourAdapterPID)
		after := adapterCounters(b)
		for _, backend := range []string{"prometheus", "kafka"} {
			var d float64
			for k, v := range after {
				if strings.HasPrefix(k, backend+"_") {
					d += v - before[k]
				}
			}
			b.ReportMetric(d/w.Seconds(), label+"-"+backend+"-req/s")
			b.Logf("%s: %s %.1f requests/s", label, backend, d/w.Seconds())
		}
		report(label, r)
	}

	// The sweep, with the controller tuned so that it is not the limit:
	// 10, 100, then all HPAs on the same 1,000 pods and groups.
	tuned := []string{"--concurrent-horizontal-pod-autoscaler-syncs=20", "--kube-api-qps=300", "--kube-api-burst=400"}
	restartControllerManager(b, tuned)
	b.Cleanup(func() { restartControllerManager(b, nil) })
	created := 0
	for k, n := range sizes(hpas) {
		createHPAs(created, n)
		created = n
		if k == 0 {
			// rate(...[2m]) needs two minutes of samples before the pods
			// metric has values.
			b.Logf("waiting 150 s for rate(...[2m]) to cover the synthetic series")
			time.Sleep(150 * time.Second)
		} else {
			time.Sleep(30 * time.Second)
		}
		w := window
		if n < hpas {
			w = window / 2 // fewer HPAs: as many intervals in less time
		}
		ours(fmt.Sprintf("tuned-%d", n), n, w)
	}

	// A noisy namespace asks for ever new selectors while the HPAs run:
	// its per-namespace budget refuses it past 250 queries, and the
	// others' evaluations must not slow down.
	noisy := noise(b, namespace(b), topic)
	ours(fmt.Sprintf("noisy-%d", hpas), hpas, window)
	b.Logf("noisy namespace: %s", noisy())

	// The controller as it ships.
	restartControllerManager(b, nil)
	time.Sleep(30 * time.Second)
	ours(fmt.Sprintf("default-%d", hpas), hpas, window)

	// prometheus-adapter on the same HPAs, the controller tuned again.
	restartControllerManager(b, tuned)
	pid := switchToPrometheusAdapter(b)
	time.Sleep(60 * time.Second)
	report(fmt.Sprintf("prometheus-adapter-%d", hpas), measureHPAs(b, namespaces, hpas, 3*time.Minute, func(testing.TB) int { return pid }))
}

// sizes are the HPA counts of the sweep: 10, 100, ... up to n.
func sizes(n int) []int {
	var out []int
	for s := 10; s < n; s *= 10 {
		out = append(out, s)
	}
	return append(out, n)
}

// noise asks, from namespace ns and as fast as 4 callers can, for the lag
// of ever new consumer groups and the pods metric of ever new selectors,
// until the test ends; the returned func says what it got.
func noise(b testing.TB, ns, topic string) func() string {
	get := aggregatedClient(b)
	stop := make(chan struct{})
	var mu sync.Mutex
	codes := map[string]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sel := url.QueryEscape(fmt.Sprintf("consumergroup=noise-%d-%d,topic=%s", w, i, topic))
				path := "/apis/external.metrics.k8s.io/v1beta1/namespaces/" + ns + "/kafka_consumergroup_lag?labelSelector=" + sel
				if i%2 == 1 {
					path = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + ns + "/pods/*/flask_http_request_per_second?labelSelector=" + url.QueryEscape(fmt.Sprintf("app=noise-%d-%d", w, i))
				}
				_, err := get(path)
				code := "200"
				if err != nil {
					code, _, _ = strings.Cut(err.Error(), " ")
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		}()
	}
	var once sync.Once
	end := func() { once.Do(func() { close(stop); wg.Wait() }) }
	b.Cleanup(end)
	return func() string {
		end()
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprintf("answers by status %v", codes)
	}
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func groupName(i int) string { return fmt.Sprintf("hpa-bench-g-%04d", i) }

// parallel runs f for 0..n-1, 20 at a time, and fails on the first error.
func parallel(b testing.TB, n int, f func(i int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 20)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// lagFixture makes topic (10 partitions, 20 records each) and commits
// offset i%20 in every partition for group i.
func lagFixture(b testing.TB, topic string, groups int) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(hostKafka), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := adm.CreateTopic(ctx, 10, 1, nil, topic); err != nil && !strings.Contains(err.Error(), "TOPIC_ALREADY_EXISTS") {
		b.Fatal(err)
	}
	testproc.Eventually(b, time.Minute, "leaders of "+topic, func() error {
		o, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			return err
		}
		return o.Error()
	})
	for p := range 10 {
		for range 20 {
			cl.Produce(ctx, &kgo.Record{Topic: topic, Partition: int32(p), Value: []byte("x")}, nil)
		}
	}
	if err := cl.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	for i := range groups {
		var o kadm.Offsets
		for p := range 10 {
			o.AddOffset(topic, int32(p), int64(i%20), -1)
		}
		if _, err := adm.CommitOffsets(ctx, groupName(i), o); err != nil {
			b.Fatal(err)
		}
	}
}

// grantLag lets every namespace read the lag on topic, for the bench.
func grantLag(b testing.TB, topic string) {
	ctx := context.Background()
	cms := client.CoreV1().ConfigMaps("monitoring")
	cm, err := cms.Get(ctx, "purchase-metrics-adapter-config", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	orig := cm.Data["config.yaml"]
	cm.Data["config.yaml"] = orig + fmt.Sprintf("    - {namespace: \"*\", consumerGroups: [\"*\"], topics: [%q]}\n", topic)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if cm, err := cms.Get(context.Background(), "purchase-metrics-adapter-config", metav1.GetOptions{}); err == nil {
			cm.Data["config.yaml"] = orig
			_, _ = cms.Update(context.Background(), cm, metav1.UpdateOptions{})
		}
	})
}

// hpaRound is what one measuring window saw.
type hpaRound struct {
	hpas, evaluated, requests, errors int
	intervalP50, intervalP99, maxGap  time.Duration
	// meanInterval is the window times the HPAs over the pods-metric
	// requests: what an HPA evaluated less than twice in the window gets
	// (it has no interval of its own in it).
	meanInterval              time.Duration
	within                    float64 // share of intervals within 15 s ± 1 s
	latencyP50, latencyP99    time.Duration
	adapterCPU, adapterRSSMiB float64
}

func (r hpaRound) String() string {
	s := fmt.Sprintf("%d of %d HPAs evaluated; %d requests (%d errors); mean interval %s; interval between an HPA's evaluations p50 %s, p99 %s, max %s; %.1f %% of intervals within 15±1 s; request p50 %.1f ms, p99 %.1f ms",
		r.evaluated, r.hpas, r.requests, r.errors, r.meanInterval.Round(100*time.Millisecond), r.intervalP50.Round(10*time.Millisecond), r.intervalP99.Round(10*time.Millisecond), r.maxGap.Round(10*time.Millisecond),
		100*r.within, ms(r.latencyP50), ms(r.latencyP99))
	if r.adapterCPU > 0 {
		s += fmt.Sprintf("; adapter %.2f cores, %.0f MiB resident", r.adapterCPU, r.adapterRSSMiB)
	}
	return s
}

// auditEvent is the part of an audit log line the bench reads.
type auditEvent struct {
	Stage      string `json:"stage"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	Received time.Time `json:"requestReceivedTimestamp"`
	Done     time.Time `json:"stageTimestamp"`
}

// measureHPAs reads, after window, the HPA controller's requests to the
// metrics APIs in it from the API server's audit log: per HPA (its
// selector), the intervals between evaluations of its pods metric (and
// with external, its lag metric), and each request's time.
func measureHPAs(b testing.TB, namespaces []string, hpas int, window time.Duration, adapterPID func(testing.TB) int) hpaRound {
	pid := adapterPID(b)
	cpu0 := cpuSecondsOf(b, pid)
	from := time.Now()
	time.Sleep(window)
	to := time.Now()
	r := hpaRound{hpas: hpas}
	r.adapterCPU = (cpuSecondsOf(b, pid) - cpu0) / to.Sub(from).Seconds()
	r.adapterRSSMiB = float64(rssOf(b, pid)) / (1 << 20)
	inBench := map[string]bool{}
	for _, ns := range namespaces {
		inBench[ns] = true
	}
	seen := map[string][]time.Time{}
	var latencies []time.Duration
	for _, file := range []string{auditLog() + ".1", auditLog()} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev auditEvent
			if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.Stage != "ResponseComplete" ||
				ev.User.Username != "system:serviceaccount:kube-system:horizontal-pod-autoscaler" ||
				ev.Received.Before(from) || ev.Received.After(to) {
				continue
			}
			u, err := url.Parse(ev.RequestURI)
			if err != nil {
				continue
			}
			parts := strings.Split(u.Path, "/")
			ns := ""
			for i, p := range parts {
				if p == "namespaces" && i+1 < len(parts) {
					ns = parts[i+1]
				}
			}
			if !inBench[ns] {
				continue
			}
			key := ns + " " + parts[len(parts)-1] + " " + u.Query().Get("labelSelector")
			seen[key] = append(seen[key], ev.Received)
			latencies = append(latencies, ev.Done.Sub(ev.Received))
			r.requests++
			if ev.ResponseStatus.Code != 200 {
				r.errors++
			}
		}
		f.Close()
	}
	var intervals []time.Duration
	perHPA := map[string]bool{}
	within := 0
	for key, ts := range seen {
		f := strings.Fields(key)
		perHPA[f[0]+" "+f[len(f)-1]] = true
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
		for i := 1; i < len(ts); i++ {
			d := ts[i].Sub(ts[i-1])
			intervals = append(intervals, d)
			if d >= 14*time.Second && d <= 16*time.Second {
				within++
			}
		}
	}
	// An HPA counts as evaluated when its pods metric was asked for (the
	// lag selector names the group, not the HPA's app label).
	podsRequests := 0
	for key, ts := range seen {
		if strings.Contains(key, "flask_http_request_per_second") {
			r.evaluated++
			podsRequests += len(ts)
		}
	}
	if podsRequests > 0 {
		r.meanInterval = time.Duration(float64(to.Sub(from)) * float64(hpas) / float64(podsRequests))
	}
	slices.Sort(intervals)
	slices.Sort(latencies)
	r.intervalP50, r.intervalP99 = pct(intervals, 0.5), pct(intervals, 0.99)
	if len(intervals) > 0 {
		r.maxGap = intervals[len(intervals)-1]
		r.within = float64(within) / float64(len(intervals))
	}
	r.latencyP50, r.latencyP99 = pct(latencies, 0.5), pct(latencies, 0.99)
	return r
}

func auditLog() string {
	return filepath.Join(repoRoot, ".cache", "devcluster", "logs", "audit-metrics.log")
}

// ourAdapterPID is the adapter pod's process.
func ourAdapterPID(b testing.TB) int {
	pods, err := readyPods(context.Background(), "monitoring", "app=purchase-metrics-adapter")
	if err != nil || len(pods) != 1 {
		b.Fatalf("adapter pod: %v %d", err, len(pods))
	}
	return pidOf(pods[0])
}

// cpuSecondsOf is a process's user and system CPU time.
func cpuSecondsOf(b testing.TB, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw)[strings.LastIndexByte(string(raw), ')')+2:])
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// restartControllerManager stops kube-controller-manager and starts it
// again through cluster up with args added to its flags.
func restartControllerManager(b testing.TB, args []string) {
	pidFile := filepath.Join(repoRoot, ".cache", "devcluster", "pids", "kube-controller-manager.pid")
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		b.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(raw), "\n", 2)[0])
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		b.Fatal(err)
	}
	testproc.Eventually(b, 30*time.Second, "kube-controller-manager stopped", func() error {
		if processAlive(pid) {
			return fmt.Errorf("pid %d alive", pid)
		}
		return nil
	})
	cmd := exec.Command(filepath.Join(repoRoot, "scripts", "cluster.sh"), "up")
	cmd.Env = append(os.Environ(), "CONTROLLER_MANAGER_ARGS="+strings.Join(args, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("cluster up with %v: %v\n%s", args, err, out)
	}
	b.Logf("kube-controller-manager restarted with %v", args)
}

// switchToPrometheusAdapter runs prometheus-adapter v0.12 on the host with
// the seed's rule and the same Prometheus, and points the custom metrics
// APIServices at it; the test's end points them back.
func switchToPrometheusAdapter(b testing.TB) int {
	out, err := exec.Command(filepath.Join(repoRoot, "scripts", "tools.sh"), "ensure", "prometheus-adapter").CombinedOutput()
	if err != nil {
		b.Fatalf("building prometheus-adapter: %v\n%s", err, out)
	}
	bin, err := exec.Command(filepath.Join(repoRoot, "scripts", "tools.sh"), "path", "prometheus-adapter").Output()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	rules := `rules:
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: "namespace"}
        pod: {resource: "pod"}
    name:
      matches: "^(.*)_total$"
      as: "${1}_per_second"
    metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
`
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(rules), 0o644); err != nil {
		b.Fatal(err)
	}
	const port = 6444
	cmd := exec.Command(strings.TrimSpace(string(bin)),
		"--secure-port="+strconv.Itoa(port), "--bind-address=10.88.0.1", "--cert-dir="+dir,
		"--lister-kubeconfig="+kubeconfig, "--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--prometheus-url="+prometheusURL+"/", "--metrics-relist-interval=1m", "--config="+filepath.Join(dir, "config.yaml"), "--v=1")
	logf, err := os.Create(filepath.Join(repoRoot, ".cache", "prometheus-adapter-bench.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logf.Close() })

	ctx := context.Background()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "prometheus-adapter-bench", Namespace: "monitoring"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(port)}}}}
	if _, err := client.CoreV1().Services("monitoring").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	eps := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "prometheus-adapter-bench", Namespace: "monitoring", Labels: map[string]string{discoveryv1.LabelServiceName: "prometheus-adapter-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.88.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices("monitoring").Create(ctx, eps, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = client.CoreV1().Services("monitoring").Delete(context.Background(), "prometheus-adapter-bench", metav1.DeleteOptions{})
		_ = client.DiscoveryV1().EndpointSlices("monitoring").Delete(context.Background(), "prometheus-adapter-bench", metav1.DeleteOptions{})
	})
	for _, api := range []string{"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io"} {
		orig := kubectl(b, "get", "apiservice", api, "-o", "json")
		b.Cleanup(func() {
			_, _ = execKubectl("delete", "apiservice", api)
			cmd := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "create", "-f", "-")
			cmd.Stdin = strings.NewReader(stripServerFields(orig))
			_ = cmd.Run()
		})
		kubectl(b, "patch", "apiservice", api, "--type=json", "-p",
			`[{"op":"replace","path":"/spec/service","value":{"name":"prometheus-adapter-bench","namespace":"monitoring","port":443}},`+
				`{"op":"remove","path":"/spec/caBundle"},{"op":"add","path":"/spec/insecureSkipTLSVerify","value":true}]`)
	}
	testproc.Eventually(b, 2*time.Minute, "prometheus-adapter's APIServices available", func() error {
		for _, api := range []string{"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io"} {
			out, err := execKubectl("get", "apiservice", api, "-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}`)
			if err != nil || strings.TrimSpace(out) != "True" {
				return fmt.Errorf("%s available=%q %v", api, out, err)
			}
		}
		return nil
	})
	b.Logf("custom.metrics.k8s.io now served by prometheus-adapter %s", strings.TrimSpace(string(bin)))
	return cmd.Process.Pid
}

// stripServerFields drops what the API server sets from an object's JSON,
// so it can be created again.
func stripServerFields(raw string) string {
	var obj map[string]any
	if json.Unmarshal([]byte(raw), &obj) != nil {
		return raw
	}
	if md, ok := obj["metadata"].(map[string]any); ok {
		for _, k := range []string{"resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"} {
			delete(md, k)
		}
	}
	delete(obj, "status")
	out, _ := json.Marshal(obj)
	return string(out)
}
