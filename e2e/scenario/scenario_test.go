// Package scenario is the end-to-end autoscaling scenario: on a deployed
// system (any cluster: it needs only a kubeconfig and the web server's
// URL), load makes the web server scale out on its request rate and a
// backlog makes the consumer scale out on Kafka lag; both come back when
// the load goes; every acknowledged purchase is then stored exactly once.
// It writes the run as a timeline (CSV and chart) under -out.
//
//	go test ./e2e/scenario -args -kubeconfig ... -web-url http://localhost:30080
//
// make e2e runs it on the local Kubernetes (scripts/e2e.sh), e2e/kind/run.sh
// on kind. Run without -kubeconfig it is skipped: it needs a deployed system.
package scenario

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/autoscaling"
	"github.com/purchase-system/purchase-system/e2e/internal/clusterstate"
	"github.com/purchase-system/purchase-system/e2e/internal/load"
	"github.com/purchase-system/purchase-system/e2e/internal/timeline"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

var (
	kubeconfig    = flag.String("kubeconfig", os.Getenv("E2E_KUBECONFIG"), "kubeconfig of the cluster the system is deployed on")
	webURL        = flag.String("web-url", "http://localhost:30080", "the web server's URL as a client reaches it")
	namespace     = flag.String("namespace", "purchase-system", "the system's namespace")
	prometheusURL = flag.String("prometheus-url", "", "Prometheus that scrapes the system; when set, every dashboard and rule expression is run against it")
	rate          = flag.Float64("rate", 350, "purchases per second offered while loading (open loop)")
	outDir        = flag.String("out", "", "where the timeline goes (default _output/e2e in the checkout)")
	hold          = flag.Duration("hold", 45*time.Second, "how long the load goes on once the web server has settled")
	loadMax       = flag.Duration("load-max", 9*time.Minute, "give up when the web server has not scaled out and settled within this")
	settleMax     = flag.Duration("settle-max", 8*time.Minute, "give up when the system has not scaled back within this after the load")
)

// The HPAs' targets and limits as manifests/base/hpa.yaml sets them.
const (
	perPodTarget = 100
	// perReplicaLag is the consumer HPA's target: messages behind per replica.
	perReplicaLag = 100
	webMin        = 2
	webMax        = 10
	consumerMin   = 1
	consumerMax   = 5
	sampleEvery   = 3 * time.Second
)

func TestAutoscalingScenario(t *testing.T) {
	if *kubeconfig == "" {
		t.Skip("the scenario runs on a deployed system: make e2e (or e2e/kind/run.sh) deploys one and passes -kubeconfig")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	clusterstate.LogOnFailure(t, client)
	ns := *namespace
	out := *outDir
	if out == "" {
		root, err := testproc.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		out = filepath.Join(root, "_output", "e2e")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var report []string
	note := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		t.Log(line)
		report = append(report, line)
	}

	// 1. Every HPA has a real value for every metric soon after the pods
	// are Ready: an idle system reads 0, not <unknown>.
	readyAt := waitPodsReady(t, client, ns)
	testproc.Eventually(t, 90*time.Second-time.Since(readyAt), "every HPA metric known", func() error {
		s, err := autoscaling.Read(ctx, client, ns)
		if err != nil {
			return err
		}
		for _, name := range []string{autoscaling.WebServer, autoscaling.Consumer} {
			h, ok := s.HPAs[name]
			if !ok {
				return fmt.Errorf("no HPA %s", name)
			}
			for _, m := range h.Metrics {
				if !m.Known {
					return fmt.Errorf("HPA %s: %s is <unknown> (%s)", name, m.Name, h.Conditions["ScalingActive"].Message)
				}
			}
		}
		return nil
	})
	note("every HPA metric had a value %.0f s after the pods were Ready", time.Since(readyAt).Seconds())

	// 2 and 3. Open-loop load: the web server gets well over 100 req/s per
	// pod, the slower consumer falls behind.
	run := fmt.Sprintf("e2e-%d-", time.Now().Unix())
	gen := &load.Generator{URL: strings.TrimSuffix(*webURL, "/") + "/buy", Rate: *rate, Users: 500, UserPrefix: run}
	rec := &recorder{client: client, ns: ns, gen: gen, start: time.Now()}
	recCtx, stopRec := context.WithCancel(ctx)
	recDone := make(chan struct{})
	go func() { defer close(recDone); rec.run(recCtx) }()
	loadCtx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { defer close(loadDone); gen.Run(loadCtx) }()
	note("load: %.0f purchases/s offered to %s", *rate, gen.URL)

	var firstWebScaleUp, consumerScaledOut time.Duration
	deadline := time.Now().Add(*loadMax)
	settled := 0
	for {
		time.Sleep(sampleEvery)
		s, ok := rec.latest()
		if !ok {
			continue
		}
		web, cons := s.HPAs[autoscaling.WebServer], s.HPAs[autoscaling.Consumer]
		// Desired is what the HPA set the Deployment to; its current count
		// follows at its next sync.
		if firstWebScaleUp == 0 && web.Desired > webMin {
			firstWebScaleUp = time.Since(rec.start)
			note("web server scaled out to %d at %.0f s", web.Desired, firstWebScaleUp.Seconds())
		}
		if consumerScaledOut == 0 && cons.Desired > consumerMin {
			consumerScaledOut = time.Since(rec.start)
			note("consumer scaled out to %d at %.0f s (lag %.0f)", cons.Desired, consumerScaledOut.Seconds(), s.Lag)
		}
		// Settled: scaled out, every pod Ready and taking traffic, and the
		// per-pod mean under the target for a few samples in a row.
		if firstWebScaleUp > 0 && web.Current == web.Desired && s.PerPodErr == nil && len(s.PerPod) == int(web.Current) &&
			s.PerPodAverage < perPodTarget && allServe(s.PerPod) {
			settled++
		} else {
			settled = 0
		}
		if settled >= 3 && consumerScaledOut > 0 {
			note("web server settled at %d pods, %.1f req/s per pod (target %d), at %.0f s", web.Current, s.PerPodAverage, perPodTarget, time.Since(rec.start).Seconds())
			break
		}
		if time.Now().After(deadline) {
			stopLoad()
			<-loadDone
			stopRec()
			<-recDone
			rec.write(t, out)
			t.Fatalf("after %s of load: web server %d/%d replicas, per pod %v (mean %.1f, err %v); consumer %d/%d, lag %.0f",
				*loadMax, web.Current, web.Desired, s.PerPod, s.PerPodAverage, s.PerPodErr, cons.Current, cons.Desired, s.Lag)
		}
	}
	// The load goes on a while: the web server holds its size, the per-pod
	// value stays under the target, the consumers keep up.
	holdUntil := time.Now().Add(*hold)
	for time.Now().Before(holdUntil) {
		time.Sleep(sampleEvery)
		s, _ := rec.latest()
		if web := s.HPAs[autoscaling.WebServer]; s.PerPodAverage >= perPodTarget*1.1 || web.Desired > web.Current {
			t.Errorf("at %.0f s, after settling: %.1f req/s per pod, web server %d/%d", time.Since(rec.start).Seconds(), s.PerPodAverage, web.Current, web.Desired)
		}
	}
	if *prometheusURL != "" {
		checkExpressions(t, *prometheusURL, note)
	}
	stopLoad()
	<-loadDone
	c := gen.Counts()
	note("load stopped at %.0f s: %d offered, %d acknowledged, %d failed, %d dropped; statuses %v",
		time.Since(rec.start).Seconds(), c.Offered, c.Acked, c.Failed, c.Dropped, gen.Statuses())
	stopped := time.Now()

	// 4. Back down: the web server to its minimum, the lag to 0 and the
	// consumer to one replica.
	testproc.Eventually(t, *settleMax, "both Deployments back at their minimum, lag 0", func() error {
		s, ok := rec.latest()
		if !ok {
			return fmt.Errorf("no sample yet")
		}
		web, cons := s.HPAs[autoscaling.WebServer], s.HPAs[autoscaling.Consumer]
		if web.Current != webMin || cons.Current != consumerMin || s.LagErr != nil || s.Lag != 0 {
			return fmt.Errorf("web server %d, consumer %d, lag %.0f (%v)", web.Current, cons.Current, s.Lag, s.LagErr)
		}
		return nil
	})
	note("back to %d web server pods and %d consumer %.0f s after the load stopped", webMin, consumerMin, time.Since(stopped).Seconds())
	time.Sleep(2 * sampleEvery)
	stopRec()
	<-recDone
	rec.write(t, out)

	// The whole way: within the limits, and the web server's first
	// scale-out was for its request rate.
	rows := rec.rowsCopy()
	var peak timeline.Row
	for _, r := range rows {
		if r.Lag > peak.Lag {
			peak = r
		}
	}
	// While purchases keep arriving, a few are always in flight: the lag
	// is drained once it is under one replica's target.
	var drained, zero float64
	for _, r := range rows {
		if r.Seconds > peak.Seconds && r.Lag < perReplicaLag && drained == 0 {
			drained = r.Seconds
		}
		if r.Seconds > peak.Seconds && r.Lag == 0 && zero == 0 {
			zero = r.Seconds
		}
	}
	note("lag: peak %.0f at %.0f s, under %d at %.0f s, 0 at %.0f s", peak.Lag, peak.Seconds, perReplicaLag, drained, zero)
	for _, r := range rows {
		if r.WebCurrent > webMax || r.WebDesired > webMax || r.ConsumerCurrent > consumerMax || r.ConsumerDesired > consumerMax {
			t.Errorf("at %.0f s: web server %d/%d, consumer %d/%d: above the maximum", r.Seconds, r.WebCurrent, r.WebDesired, r.ConsumerCurrent, r.ConsumerDesired)
		}
	}
	checkScaleUpReason(t, client, ns, note)

	// 5. Every acknowledged purchase stored exactly once.
	checkStored(t, *webURL, gen.Acknowledged(), note)

	if err := os.WriteFile(filepath.Join(out, "summary.txt"), []byte(strings.Join(report, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// allServe reports whether every pod has a value above 0: a pod the
// Service sends nothing to would make the mean look settled while the
// others are overloaded.
func allServe(perPod map[string]float64) bool {
	for _, v := range perPod {
		if v <= 0 {
			return false
		}
	}
	return len(perPod) > 0
}

// waitPodsReady waits for every pod of the namespace to be Ready and
// returns when the last one became so.
func waitPodsReady(t *testing.T, c kubernetes.Interface, ns string) time.Time {
	t.Helper()
	var last time.Time
	testproc.Eventually(t, 3*time.Minute, "every pod in "+ns+" Ready", func() error {
		pods, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) == 0 {
			return fmt.Errorf("no pods")
		}
		last = time.Time{}
		for _, p := range pods.Items {
			ready := false
			for _, cond := range p.Status.Conditions {
				if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					ready = true
					if cond.LastTransitionTime.After(last) {
						last = cond.LastTransitionTime.Time
					}
				}
			}
			if !ready {
				return fmt.Errorf("pod %s not Ready", p.Name)
			}
		}
		return nil
	})
	return last
}

// recorder samples the system every few seconds into the timeline.
type recorder struct {
	client kubernetes.Interface
	ns     string
	gen    *load.Generator
	start  time.Time

	mu   sync.Mutex
	rows []timeline.Row
	last *autoscaling.Snapshot
}

func (r *recorder) run(ctx context.Context) {
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	prev, prevAt := r.gen.Counts(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s, err := autoscaling.Read(ctx, r.client, r.ns)
		if err != nil {
			continue
		}
		c, at := r.gen.Counts(), time.Now()
		dt := at.Sub(prevAt).Seconds()
		row := timeline.Row{
			Seconds:    at.Sub(r.start).Seconds(),
			OfferedRPS: float64(c.Offered-prev.Offered) / dt,
			AckedRPS:   float64(c.Acked-prev.Acked) / dt,
			PerPodRPS:  s.PerPodAverage,
			Lag:        s.Lag,
		}
		prev, prevAt = c, at
		if h, ok := s.HPAs[autoscaling.WebServer]; ok {
			row.WebDesired, row.WebCurrent = h.Desired, h.Current
		}
		if h, ok := s.HPAs[autoscaling.Consumer]; ok {
			row.ConsumerDesired, row.ConsumerCurrent = h.Desired, h.Current
		}
		r.mu.Lock()
		r.rows = append(r.rows, row)
		r.last = &s
		r.mu.Unlock()
	}
}

func (r *recorder) latest() (autoscaling.Snapshot, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return autoscaling.Snapshot{}, false
	}
	return *r.last, true
}

func (r *recorder) rowsCopy() []timeline.Row {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]timeline.Row(nil), r.rows...)
}

func (r *recorder) write(t *testing.T, dir string) {
	t.Helper()
	rows := r.rowsCopy()
	csvPath, pngPath := filepath.Join(dir, "timeline.csv"), filepath.Join(dir, "timeline.png")
	if err := timeline.WriteCSV(csvPath, rows); err != nil {
		t.Error(err)
	}
	title := fmt.Sprintf("%.0f purchases/s offered", r.gen.Rate)
	if err := timeline.DrawPNG(pngPath, title, rows, perPodTarget); err != nil {
		t.Error(err)
	}
	t.Logf("timeline: %s, %s (%d samples)", csvPath, pngPath, len(rows))
}

// checkScaleUpReason reads the web server HPA's events: its first
// scale-out must name the request rate.
func checkScaleUpReason(t *testing.T, c kubernetes.Interface, ns string, note func(string, ...any)) {
	t.Helper()
	evs, err := c.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=" + autoscaling.WebServer + ",reason=SuccessfulRescale",
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(evs.Items, func(i, j int) bool { return evs.Items[i].FirstTimestamp.Before(&evs.Items[j].FirstTimestamp) })
	var ups []string
	for _, e := range evs.Items {
		if strings.Contains(e.Message, "above target") {
			ups = append(ups, e.Message)
		}
	}
	if len(ups) == 0 {
		t.Fatalf("no scale-out event of HPA %s", autoscaling.WebServer)
	}
	for _, m := range ups {
		note("web server HPA event: %s", m)
	}
	if !strings.Contains(ups[0], "pods metric "+autoscaling.RequestRate+" above target") {
		t.Errorf("the web server's first scale-out was not for its request rate: %q", ups[0])
	}
}

// checkStored reads every user's purchases back through the web server
// and compares them with what was acknowledged: none missing, none twice.
func checkStored(t *testing.T, base string, acked []load.Purchase, note func(string, ...any)) {
	t.Helper()
	byUser := map[string]map[string]bool{} // user → nonces acknowledged
	for _, p := range acked {
		if byUser[p.UserID] == nil {
			byUser[p.UserID] = map[string]bool{}
		}
		byUser[p.UserID][p.Nonce] = true
	}
	var missing, duplicated, unacknowledged int
	client := &http.Client{Timeout: 30 * time.Second}
	for user, nonces := range byUser {
		resp, err := client.Get(strings.TrimSuffix(base, "/") + "/getAllUserBuys/" + url.PathEscape(user) + "?limit=10000")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET purchases of %s: %d %s", user, resp.StatusCode, b)
		}
		var stored []struct {
			ID       string `json:"id"`
			Username string `json:"username"`
		}
		if err := json.Unmarshal(b, &stored); err != nil {
			t.Fatal(err)
		}
		// Rows per request nonce, whatever their ids: a purchase stored
		// twice is two rows of one nonce (counting ids, the primary key,
		// could never see it).
		rows := map[string]int{}
		for _, s := range stored {
			rows[s.Username]++
		}
		for nonce := range nonces {
			switch n := rows[nonce]; {
			case n == 0:
				missing++
			case n > 1:
				duplicated += n - 1
			}
		}
		for nonce, n := range rows {
			if !nonces[nonce] {
				// Stored but its answer never reached the client (a timeout
				// after Kafka took it): not lost, and not acknowledged.
				unacknowledged += n
			}
		}
	}
	note("stored: %d acknowledged purchases of %d users checked by request nonce: %d missing, %d stored twice, %d stored without an acknowledgement",
		len(acked), len(byUser), missing, duplicated, unacknowledged)
	if missing > 0 || duplicated > 0 {
		t.Errorf("%d acknowledged purchases missing, %d stored twice", missing, duplicated)
	}
}
