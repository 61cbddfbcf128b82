// Package faults is the fault table: on the local Kubernetes with the
// system deployed (overlays/e2e) and a steady POST /buy load, it breaks one
// part at a time (then two at once) and checks what users are promised:
// every purchase that got a 2xx is stored exactly once, every failure is a
// clear 5xx (never a 2xx for something not kept), the system recovers
// without help, the HPAs hold their replica counts while their metrics are
// away, and Kafka lag is an error while Kafka is away, never 0. It writes
// one table per run (_output/faults/table.md); docs/RELIABILITY.md
// summarises it.
//
//	go test ./e2e/faults -args -kubeconfig ...
//
// scripts/e2e.sh runs it after the scenario. Kafka, PostgreSQL and
// Prometheus are pods there (manifests/overlays/local): their rows kill -9
// their processes, delete their pods, or scale them to 0 for a while. A
// kill -9 acts on this machine's processes, so it runs on the local
// Kubernetes only; without -kubeconfig it is skipped.
package faults

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"github.com/purchase-system/purchase-system/devcluster/node"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/e2e/internal/autoscaling"
	"github.com/purchase-system/purchase-system/e2e/internal/clusterstate"
	"github.com/purchase-system/purchase-system/e2e/internal/load"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

var (
	kubeconfig  = flag.String("kubeconfig", os.Getenv("E2E_KUBECONFIG"), "kubeconfig of the local Kubernetes the system is deployed on")
	webURL      = flag.String("web-url", "http://localhost:30080", "the web server's URL")
	namespace   = flag.String("namespace", "purchase-system", "the system's namespace")
	databaseURL = flag.String("database-url", "", "the PostgreSQL the consumer stores into, as this machine reaches it (default: the postgres Service's cluster IP, with the password of the Secret postgres)")
	rate        = flag.Float64("rate", 45, "purchases per second offered during each fault")
	outDir      = flag.String("out", "", "where the table goes (default _output/faults in the checkout)")
	only        = flag.String("faults", "", "run only the rows whose name matches this regular expression")
)

// perPodTarget is the web server HPA's request-rate target during the
// suite: low enough that the steady load holds it above its minimum, so
// "the HPA holds its replica count" is a real check, not the floor.
const perPodTarget = "15"

// minObserved is how long the load runs after a fault's start at least.
const minObserved = 20 * time.Second

// env is what every fault acts on.
type env struct {
	t      *testing.T
	client kubernetes.Interface
	ns     string
	db     *sql.DB
}

// fault is one row of the table. inject breaks something and returns how
// to end it (nil when the fault ends by itself, as a killed pod that is
// restarted); while it lasts, during is called every second.
type fault struct {
	name   string
	inject func(e *env) (restore func())
	away   time.Duration // how long a fault with a restore lasts
	during func(e *env, since time.Duration) error
	// hold: the HPAs whose metrics the fault takes away; they must keep
	// their replica counts while it lasts, and act on their metrics again
	// after. The others go on scaling on what they still read.
	hold []string
	// cutsConnections: the fault kills a web server process, so the
	// requests it was serving get no answer (their connections reset), as
	// on any cluster; they were never acknowledged. Every other fault
	// must answer every request.
	cutsConnections bool
}

// row is what one fault did.
type row struct {
	fault                  string
	acked, stored, missing int
	duplicates, unacked    int
	status5xx, noAnswer    int
	other                  map[int]int // any other non-201 status
	answersAgain           float64     // seconds from the fault's start to the last failed answer
	caughtUp               float64     // the longest an acknowledged purchase waited to be stored (s)
	hpaHeld                string
	notes                  []string
}

func TestFaultTable(t *testing.T) {
	if *kubeconfig == "" {
		// make test runs it through scripts/e2e.sh, never bare: it is
		// left out of the plain package list.
		t.Skip("the fault table needs the system deployed on the local Kubernetes: make e2e (part of make test) deploys it and passes -kubeconfig; it never guesses a cluster to break")
	}
	e := newEnv(t)
	out := *outDir
	if out == "" {
		root, err := testproc.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		out = filepath.Join(root, "_output", "faults")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}

	// The web server's HPA aims at 15 requests/s per pod for the suite:
	// the steady load keeps it at 3 pods, above its minimum of 2.
	restoreTarget := e.setWebTarget(perPodTarget)
	defer restoreTarget()
	warm := &load.Generator{URL: strings.TrimSuffix(*webURL, "/") + "/buy", Rate: *rate, Users: 50, UserPrefix: fmt.Sprintf("fault-warm-%d-", time.Now().Unix())}
	warmCtx, stopWarm := context.WithCancel(context.Background())
	warmDone := make(chan struct{})
	go func() { defer close(warmDone); warm.Run(warmCtx) }()
	testproc.Eventually(t, 4*time.Minute, "the web server at 3 Ready pods under the steady load", e.webSteadyAbove2)
	stopWarm()
	<-warmDone

	pick, err := regexp.Compile(*only)
	if err != nil {
		t.Fatalf("-faults: %v", err)
	}
	var rows []row
	for _, f := range e.faults() {
		if !pick.MatchString(f.name) {
			continue
		}
		r := e.run(f)
		rows = append(rows, r)
		t.Logf("%s: %d acknowledged, %d stored, %d missing, %d duplicates, %d 5xx, %d no answer, last failure at %.0f s, longest wait to be stored %.0f s %s",
			r.fault, r.acked, r.stored, r.missing, r.duplicates, r.status5xx, r.noAnswer, r.answersAgain, r.caughtUp, r.hpaHeld)
		for _, n := range r.notes {
			t.Logf("  %s", n)
		}
		if r.missing > 0 || r.duplicates > 0 {
			t.Errorf("%s: %d acknowledged purchases missing, %d stored twice", r.fault, r.missing, r.duplicates)
		}
		if r.noAnswer > 0 && !f.cutsConnections {
			t.Errorf("%s: %d requests got no answer (want a 201 or a 5xx saying why)", r.fault, r.noAnswer)
		}
		for status, n := range r.other {
			if status >= 200 && status < 300 {
				t.Errorf("%s: %d answers %d without a purchase", r.fault, n, status)
			} else {
				t.Errorf("%s: %d answers %d (want 201, or a 5xx saying why)", r.fault, n, status)
			}
		}
	}
	table := formatTable(rows)
	path := filepath.Join(out, "table.md")
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("fault table (%s):\n%s", path, table)
}

// newEnv connects to the deployed system: its cluster and its database.
func newEnv(t *testing.T) *env {
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, client: kubernetes.NewForConfigOrDie(cfg), ns: *namespace}
	clusterstate.LogOnFailure(t, e.client)
	dsn := *databaseURL
	if dsn == "" {
		if dsn, err = e.inClusterDatabaseURL(); err != nil {
			t.Fatal(err)
		}
	}
	if e.db, err = sql.Open("pgx", dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	return e
}

// faults lists the rows: each part alone, then two at once.
func (e *env) faults() []fault {
	lagIsAnError := func(e *env, since time.Duration) error {
		// Past the adapter's refresh, the lag of a group whose broker is
		// away is an error: an HPA must not read 0 and scale in.
		if since < 15*time.Second {
			return nil
		}
		s, err := autoscaling.Read(context.Background(), e.client, e.ns)
		if err != nil {
			return nil
		}
		if s.LagErr == nil {
			return fmt.Errorf("lag read %v with Kafka away, want an error", s.Lag)
		}
		return nil
	}
	kafkaRows := []fault{
		// The broker's container is restarted by the kubelet: the
		// producers and the consumer reconnect to the same pod.
		{name: "kill -9 the Kafka broker", inject: func(e *env) func() { e.kill9("app=kafka"); return nil }},
	}
	if n := e.brokers(); n >= 3 {
		// Three brokers, every partition on each, two in sync needed for
		// a write (components/kafka-three-brokers): the rows of a broker
		// lost while the others go on.
		kafkaRows = []fault{
			// The other two elect a new leader for its partitions; the
			// producers' in-flight writes are retried there (idempotent:
			// never twice).
			{name: "kill -9 the partition leader's broker", inject: func(e *env) func() {
				e.kill9Pod(e.podNamed(e.partitionLeaderPod()))
				return nil
			}},
			// Scaled from 3 to 2 (its pod deleted gracefully: it hands its
			// leaderships over first) and back after a minute, when it
			// catches up from the other two.
			{name: "one Kafka broker down (60 s)", away: 60 * time.Second, inject: func(e *env) func() {
				e.scaleWorkload(e.ns, "statefulset", "kafka", n-1)
				return func() { e.scaleWorkload(e.ns, "statefulset", "kafka", n) }
			}},
		}
	}
	rows := []fault{
		{name: "kill -9 a consumer pod", inject: func(e *env) func() { e.kill9("app=customer-management-api"); return nil }},
		{name: "kill -9 a web server pod", cutsConnections: true, inject: func(e *env) func() { e.kill9("app=customer-web-server"); return nil }},
	}
	rows = append(rows, kafkaRows...)
	return append(rows, []fault{
		// A graceful stop; the StatefulSet makes a new pod on the same
		// volume.
		{name: "delete the PostgreSQL pod", inject: func(e *env) func() { e.deletePod("app=postgres"); return nil }},
		{name: "roll the web server Deployment", inject: func(e *env) func() { e.rollout("customer-web-server"); return nil }},
		// 45 s away: longer than the e2e overlay's 30 s scale-down
		// windows, so an HPA fed a made-up value (say 0) would have scaled
		// in within the row.
		{name: "kill the adapter (kill -9, away 45 s)", away: 45 * time.Second, hold: []string{autoscaling.WebServer, autoscaling.Consumer},
			inject: func(e *env) func() {
				// Scaled to 0 first, so the killed container is not
				// restarted: otherwise it answers again for the seconds
				// until the scale-down lands, and an HPA sync in that gap
				// acts on real values.
				p := e.pod("monitoring", "app=purchase-metrics-adapter")
				e.scale("monitoring", "purchase-metrics-adapter", 0)
				e.kill9Pod(p)
				return func() { e.scale("monitoring", "purchase-metrics-adapter", 1) }
			}},
		// The consumer's lag comes from Kafka, not Prometheus: it keeps
		// being served and the consumer's HPA keeps acting on it.
		{name: "stop Prometheus (45 s)", away: 45 * time.Second, hold: []string{autoscaling.WebServer},
			inject: func(e *env) func() { return e.away("monitoring", "deployment", "prometheus") }},
		{name: "a rebalance with the database down", away: 15 * time.Second,
			inject: func(e *env) func() {
				restore := e.away(e.ns, "statefulset", "postgres")
				// A graceful stop: the consumer gives its partitions up
				// while it cannot store what it holds.
				e.deletePod("app=customer-management-api")
				return restore
			}},
		{name: "kill -9 a consumer pod while PostgreSQL is down", away: 15 * time.Second,
			inject: func(e *env) func() {
				restore := e.away(e.ns, "statefulset", "postgres")
				e.kill9("app=customer-management-api")
				return restore
			}},
		{name: "Kafka away (20 s) while the web server rolls", away: 20 * time.Second, during: lagIsAnError,
			inject: func(e *env) func() {
				restore := e.away(e.ns, "statefulset", "kafka")
				e.rolloutNoWait("customer-web-server")
				return restore
			}},
	}...)
}

// answer is one request's outcome.
type answer struct {
	sent   time.Time
	status int
}

func (e *env) run(f fault) row {
	t := e.t
	r := row{fault: f.name, other: map[int]int{}}
	prefix := fmt.Sprintf("fault-%d-%s-", time.Now().UnixNano(), strings.Join(strings.Fields(strings.ToLower(f.name)), "-"))
	var mu sync.Mutex
	var answers []answer
	gen := &load.Generator{URL: strings.TrimSuffix(*webURL, "/") + "/buy", Rate: *rate, Users: 50, UserPrefix: prefix,
		OnAnswer: func(sent time.Time, status int) {
			mu.Lock()
			answers = append(answers, answer{sent, status})
			mu.Unlock()
		}}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); gen.Run(ctx) }()
	// When each purchase was first seen stored (to the second): how long
	// an acknowledged purchase waited to be stored is the consumer side's
	// recovery.
	firstSeen := map[string]time.Time{}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for watchCtx.Err() == nil {
			if ids, err := e.storedByNonce(prefix); err == nil {
				now := time.Now()
				for id := range ids {
					if _, ok := firstSeen[id]; !ok {
						firstSeen[id] = now
					}
				}
			}
			select {
			case <-watchCtx.Done():
			case <-time.After(time.Second):
			}
		}
	}()

	time.Sleep(5 * time.Second) // steady state first
	if len(f.hold) > 0 {
		// Holding is only a check above the minimum: wait for the load to
		// keep the web server at 3 again (an earlier row may have moved it).
		testproc.Eventually(t, 3*time.Minute, f.name+": the web server back at 3 steady pods", e.webSteadyAbove2)
	}
	before, _ := autoscaling.Read(context.Background(), e.client, e.ns)
	start := time.Now()
	restore := f.inject(e)
	var held []string
	valueless := map[string]bool{} // HPAs seen without a value for some metric
	// The load goes on for at least minObserved whatever the fault: a
	// killed pod's restart and its partitions' hand-over happen under it.
	until := start.Add(max(f.away, minObserved))
	for time.Now().Before(until) {
		if restore != nil && time.Since(start) >= f.away {
			restore()
			restore = nil
		}
		if f.during != nil && restore != nil {
			if err := f.during(e, time.Since(start)); err != nil {
				t.Errorf("%s, %.0f s in: %v", f.name, time.Since(start).Seconds(), err)
			}
		}
		if len(f.hold) > 0 && restore != nil {
			held = append(held, e.checkHold(before, f.hold, valueless)...)
		}
		time.Sleep(time.Second)
	}
	if restore != nil {
		restore()
	}
	// Recovered: every workload Ready again and the web server answering
	// 201 for 5 s in a row.
	testproc.Eventually(t, 3*time.Minute, f.name+": every pod Ready again", e.allReady)
	testproc.Eventually(t, 2*time.Minute, f.name+": 5 s of 201s", func() error {
		mu.Lock()
		defer mu.Unlock()
		cut := time.Now().Add(-5 * time.Second)
		n := 0
		for i := len(answers) - 1; i >= 0 && answers[i].sent.After(cut); i-- {
			if answers[i].status != 201 {
				return fmt.Errorf("a %d at %s", answers[i].status, answers[i].sent.Format(time.TimeOnly))
			}
			n++
		}
		if n == 0 {
			return fmt.Errorf("no answers in 5 s")
		}
		return nil
	})
	if len(f.hold) > 0 {
		r.hpaHeld = e.checkResumed(f.name, before, held)
		e.checkFailureSeen(f.name, f.hold, start, valueless)
	}
	stop()
	<-done

	mu.Lock()
	sort.Slice(answers, func(i, j int) bool { return answers[i].sent.Before(answers[j].sent) })
	for _, a := range answers {
		switch {
		case a.status == 201:
		case a.status == 0:
			r.noAnswer++
		case a.status >= 500:
			r.status5xx++
		default:
			r.other[a.status]++
		}
		if a.status != 201 && a.sent.After(start) {
			r.answersAgain = a.sent.Sub(start).Seconds()
		}
	}
	mu.Unlock()

	acked := gen.Acknowledged()
	r.acked = len(acked)
	var stored map[string]int
	testproc.Eventually(t, 3*time.Minute, f.name+": every acknowledged purchase stored", func() error {
		var err error
		stored, err = e.storedByNonce(prefix)
		if err != nil {
			return err
		}
		for _, p := range acked {
			if stored[p.Nonce] == 0 {
				return fmt.Errorf("%s (of user %s) not stored yet; %d of %d stored", p.ID, p.UserID, len(stored), len(acked))
			}
		}
		return nil
	})
	stopWatch()
	<-watchDone
	seenAt := time.Now() // the ones the watch had not seen yet were seen now
	for _, p := range acked {
		at, ok := firstSeen[p.Nonce]
		if !ok {
			at = seenAt
		}
		r.caughtUp = max(r.caughtUp, at.Sub(p.AckedAt).Seconds())
	}
	ackedNonces := map[string]bool{}
	for _, p := range acked {
		ackedNonces[p.Nonce] = true
		switch n := stored[p.Nonce]; {
		case n == 0:
			r.missing++
		case n > 1:
			r.duplicates += n - 1
			r.stored++
		default:
			r.stored++
		}
	}
	for nonce, n := range stored {
		if !ackedNonces[nonce] {
			r.unacked += n
		}
	}
	if len(r.other) > 0 {
		r.notes = append(r.notes, fmt.Sprintf("statuses: %v; first errors: %v", gen.Statuses(), gen.Errors()))
	}
	return r
}

// storedByNonce counts the stored rows of the run's users by the
// request's nonce (its username): a purchase stored twice is two rows of
// one nonce, whatever ids they got (counting by id, the primary key,
// could never find two).
func (e *env) storedByNonce(prefix string) (map[string]int, error) {
	rows, err := e.db.Query(`SELECT username, count(*) FROM purchases WHERE userid LIKE $1 GROUP BY username`, prefix+"%")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// checkHold reads the HPAs while their metrics are away: none of hold may
// go below the replica count it had before the fault. It marks in
// valueless each HPA whose status has no value for one of its metrics.
func (e *env) checkHold(before autoscaling.Snapshot, hold []string, valueless map[string]bool) []string {
	s, err := autoscaling.Read(context.Background(), e.client, e.ns)
	if err != nil {
		return nil
	}
	var seen []string
	for _, name := range hold {
		b, now := before.HPAs[name], s.HPAs[name]
		// The floor is what the HPA both had and wanted before the fault:
		// a scale-down it had decided at its last sync (desired below
		// current) is carried out whatever comes after.
		floor := min(b.Current, b.Desired)
		if now.Desired < floor || now.Current < floor {
			e.t.Errorf("HPA %s went from %d/%d to %d/%d while its metrics were away", name, b.Current, b.Desired, now.Current, now.Desired)
		}
		if c := now.Conditions["ScalingActive"]; c.Status == "False" {
			seen = append(seen, name+": "+c.Reason)
		}
		for _, m := range now.Metrics {
			// The adapter's metrics only: a fresh pod's CPU is unknown for
			// a while whatever the fault.
			if !m.Known && !m.Resource {
				valueless[name] = true
			}
		}
	}
	return seen
}

// checkFailureSeen: each HPA that had to hold must have seen its metric
// fail: a FailedGet… event since the fault began, or its status without a
// value for the metric while the fault lasted (valueless). Holding alone
// proves little: an adapter that answered 0 instead of an error would
// also leave replicas alone for a while — then scale in — and would give
// neither. The event alone is not enough: the controller's recorder lets
// an HPA emit 25 warnings, then one per 5 minutes (client-go's spam
// filter, per object), and the consumer's HPA can spend them before this
// row on the earlier faults and the deployment's first minute; with CPU
// still measured, its condition stays ScalingActive.
func (e *env) checkFailureSeen(fault string, hold []string, since time.Time, valueless map[string]bool) {
	evs, err := e.client.CoreV1().Events(e.ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Errorf("%s: reading events: %v", fault, err)
		return
	}
	for _, name := range hold {
		seen := false
		for _, ev := range evs.Items {
			last := ev.LastTimestamp.Time
			if ev.EventTime.After(last) {
				last = ev.EventTime.Time
			}
			if ev.InvolvedObject.Kind == "HorizontalPodAutoscaler" && ev.InvolvedObject.Name == name &&
				strings.HasPrefix(ev.Reason, "FailedGet") && !last.Before(since.Truncate(time.Second)) {
				seen = true
			}
		}
		if !seen && !valueless[name] {
			e.t.Errorf("%s: HPA %s never reported a failed metric (no FailedGet… event, a value for every metric throughout): its metrics were not away, or were answered with made-up values", fault, name)
		}
	}
}

// checkResumed waits for both HPAs to compute from their metrics again
// and says what they did meanwhile.
func (e *env) checkResumed(name string, before autoscaling.Snapshot, held []string) string {
	start := time.Now()
	testproc.Eventually(e.t, 2*time.Minute, name+": both HPAs reading their metrics again", func() error {
		s, err := autoscaling.Read(context.Background(), e.client, e.ns)
		if err != nil {
			return err
		}
		for _, n := range []string{autoscaling.WebServer, autoscaling.Consumer} {
			if c := s.HPAs[n].Conditions["ScalingActive"]; c.Status != "True" {
				return fmt.Errorf("%s ScalingActive %s: %s", n, c.Status, c.Message)
			}
		}
		return nil
	})
	uniq := map[string]bool{}
	for _, h := range held {
		uniq[h] = true
	}
	var reasons []string
	for h := range uniq {
		reasons = append(reasons, h)
	}
	sort.Strings(reasons)
	if len(reasons) == 0 {
		reasons = []string{"no failed sync seen"}
	}
	return fmt.Sprintf("held %d web, %d consumer (%s); resumed %.0f s after", before.HPAs[autoscaling.WebServer].Current,
		before.HPAs[autoscaling.Consumer].Current, strings.Join(reasons, ", "), time.Since(start).Seconds())
}

// webSteadyAbove2: the web server at 3 or more pods, as many as its HPA
// wants, every pod Ready.
func (e *env) webSteadyAbove2() error {
	s, err := autoscaling.Read(context.Background(), e.client, e.ns)
	if err != nil {
		return err
	}
	if w := s.HPAs[autoscaling.WebServer]; w.Current < 3 || w.Desired != w.Current {
		return fmt.Errorf("web server %d/%d", w.Current, w.Desired)
	}
	return e.allReady()
}

func (e *env) allReady() error {
	for _, ns := range []string{e.ns, "monitoring"} {
		// Every workload at its replicas first: a workload scaled back
		// from 0 has no pod yet to be found not Ready.
		sets, err := e.client.AppsV1().StatefulSets(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		deps, err := e.client.AppsV1().Deployments(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, w := range sets.Items {
			if err := rolledOut("statefulset", w.ObjectMeta, w.Status.ObservedGeneration, w.Status.ReadyReplicas, *w.Spec.Replicas); err != nil {
				return err
			}
		}
		for _, w := range deps.Items {
			if err := rolledOut("deployment", w.ObjectMeta, w.Status.ObservedGeneration, w.Status.ReadyReplicas, *w.Spec.Replicas); err != nil {
				return err
			}
		}
		pods, err := e.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				return fmt.Errorf("pod %s/%s terminating", ns, p.Name)
			}
			ready := false
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready = true
				}
			}
			if !ready {
				return fmt.Errorf("pod %s/%s not Ready", ns, p.Name)
			}
		}
	}
	return nil
}

// rolledOut: a workload's controller has seen its spec and all its
// replicas are Ready.
func rolledOut(kind string, m metav1.ObjectMeta, observed int64, ready, want int32) error {
	if observed < m.Generation || ready != want {
		return fmt.Errorf("%s %s/%s: %d of %d Ready", kind, m.Namespace, m.Name, ready, want)
	}
	return nil
}

func (e *env) pod(ns, selector string) corev1.Pod {
	pods, err := e.client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			return p
		}
	}
	e.t.Fatalf("no running pod %s in %s", selector, ns)
	return corev1.Pod{}
}

func (e *env) kill9(selector string) { e.kill9In(e.ns, selector) }

// podNamed is the system's pod of that name.
func (e *env) podNamed(name string) corev1.Pod {
	p, err := e.client.CoreV1().Pods(e.ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("pod %s/%s: %v", e.ns, name, err)
	}
	return *p
}

// kill9In kills a pod's container process with SIGKILL (the container's
// first process, found through its cgroup on the local node) and waits
// until the node has seen it die.
func (e *env) kill9In(ns, selector string) { e.kill9Pod(e.pod(ns, selector)) }

// kill9Pod kills p's container process with SIGKILL and waits until the
// node has seen it die.
func (e *env) kill9Pod(p corev1.Pod) {
	ns := p.Namespace
	for _, cs := range p.Status.ContainerStatuses {
		if pid, err := node.ContainerPID(string(p.UID), cs.ContainerID); err == nil {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				e.t.Fatalf("kill -9 %d (%s): %v", pid, p.Name, err)
			}
			testproc.Eventually(e.t, time.Minute, p.Name+"'s kill seen by the node", func() error {
				cur, err := e.client.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{})
				if err != nil {
					return nil // gone: seen
				}
				for _, c := range cur.Status.ContainerStatuses {
					if c.Name == cs.Name && (c.RestartCount > cs.RestartCount || !c.Ready) {
						return nil
					}
				}
				return fmt.Errorf("%s still reported running and ready", cs.Name)
			})
			return
		}
	}
	// A pod already being deleted (the adapter row scales to 0 first) may
	// have stopped by itself in the meantime: it is away, which is the point.
	if cur, err := e.client.CoreV1().Pods(ns).Get(context.Background(), p.Name, metav1.GetOptions{}); err != nil || cur.DeletionTimestamp != nil {
		e.t.Logf("pod %s stopped before its kill -9", p.Name)
		return
	}
	e.t.Fatalf("pod %s has no container process on this node: %+v", p.Name, p.Status.ContainerStatuses)
}

func (e *env) deletePod(selector string) {
	p := e.pod(e.ns, selector)
	if err := e.client.CoreV1().Pods(e.ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) scale(ns, deployment string, n int) { e.scaleWorkload(ns, "deployment", deployment, n) }

// scaleWorkload sets the replicas of a Deployment or a StatefulSet.
func (e *env) scaleWorkload(ns, kind, name string, n int) {
	patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, n))
	var err error
	switch kind {
	case "deployment":
		_, err = e.client.AppsV1().Deployments(ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	case "statefulset":
		_, err = e.client.AppsV1().StatefulSets(ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
	default:
		err = fmt.Errorf("cannot scale a %s", kind)
	}
	if err != nil {
		e.t.Fatalf("scale %s/%s %s to %d: %v", ns, kind, name, n, err)
	}
}

// away takes a workload away (scaled to 0, its pods deleted gracefully)
// until the returned restore scales it back to its replicas. Volumes stay:
// a StatefulSet's new pods mount the same claims.
func (e *env) away(ns, kind, name string) (restore func()) {
	n := 1
	if kind == "statefulset" {
		set, err := e.client.AppsV1().StatefulSets(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		n = int(*set.Spec.Replicas)
	}
	e.scaleWorkload(ns, kind, name, 0)
	return func() { e.scaleWorkload(ns, kind, name, n) }
}

// inClusterDatabaseURL is how this machine reaches the system's
// PostgreSQL: the postgres Service's cluster IP (kube-proxy's rules on the
// node route it from here too, and it stays put when the pod is replaced)
// with the password of the Secret postgres.
func (e *env) inClusterDatabaseURL() (string, error) {
	ctx := context.Background()
	svc, err := e.client.CoreV1().Services(e.ns).Get(ctx, "postgres", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("the system's PostgreSQL (Service %s/postgres): %w", e.ns, err)
	}
	secret, err := e.client.CoreV1().Secrets(e.ns).Get(ctx, "postgres", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("the PostgreSQL password (Secret %s/postgres): %w", e.ns, err)
	}
	password := string(secret.Data["POSTGRES_PASSWORD"])
	if password == "" || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return "", fmt.Errorf("Secret %s/postgres has no POSTGRES_PASSWORD, or Service postgres no cluster IP", e.ns)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword("postgres", password), Host: net.JoinHostPort(svc.Spec.ClusterIP, "5432"),
		Path: "/purchases", RawQuery: "sslmode=disable"}
	return u.String(), nil
}

// rolloutNoWait restarts a Deployment's pods the way kubectl rollout
// restart does.
func (e *env) rolloutNoWait(deployment string) {
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	if _, err := e.client.AppsV1().Deployments(e.ns).Patch(context.Background(), deployment, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// rollout restarts a Deployment and waits for the new pods.
func (e *env) rollout(deployment string) {
	e.rolloutNoWait(deployment)
	testproc.Eventually(e.t, 3*time.Minute, deployment+" rolled", func() error {
		d, err := e.client.AppsV1().Deployments(e.ns).Get(context.Background(), deployment, metav1.GetOptions{})
		if err != nil {
			return err
		}
		st := d.Status
		if st.ObservedGeneration < d.Generation || st.UpdatedReplicas != st.Replicas || st.ReadyReplicas != st.Replicas || st.Replicas != *d.Spec.Replicas {
			return fmt.Errorf("%d updated, %d ready of %d", st.UpdatedReplicas, st.ReadyReplicas, st.Replicas)
		}
		return nil
	})
}

// setWebTarget sets the web server HPA's request-rate target and returns
// how to put the old one back.
func (e *env) setWebTarget(v string) func() {
	h, err := e.client.AutoscalingV2().HorizontalPodAutoscalers(e.ns).Get(context.Background(), autoscaling.WebServer, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	old := h.DeepCopy()
	for i, m := range h.Spec.Metrics {
		if m.Pods != nil && m.Pods.Metric.Name == autoscaling.RequestRate {
			q := m.Pods.Target.AverageValue.DeepCopy()
			if err := q.UnmarshalJSON([]byte(strconv.Quote(v))); err != nil {
				e.t.Fatal(err)
			}
			h.Spec.Metrics[i].Pods.Target.AverageValue = &q
		}
	}
	if _, err := e.client.AutoscalingV2().HorizontalPodAutoscalers(e.ns).Update(context.Background(), h, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		cur, err := e.client.AutoscalingV2().HorizontalPodAutoscalers(e.ns).Get(context.Background(), autoscaling.WebServer, metav1.GetOptions{})
		if err != nil {
			e.t.Error(err)
			return
		}
		cur.Spec.Metrics = old.Spec.Metrics
		if _, err := e.client.AutoscalingV2().HorizontalPodAutoscalers(e.ns).Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
			e.t.Error(err)
		}
	}
}

func formatTable(rows []row) string {
	var b strings.Builder
	b.WriteString("| fault | acknowledged | stored | lost | duplicates | stored, not acknowledged | 5xx | no answer | last failure (s after start) | longest 201 → stored (s) | HPAs |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		hpa := r.hpaHeld
		if hpa == "" {
			hpa = "–"
		}
		lastFailure := "–"
		if r.status5xx+r.noAnswer > 0 || len(r.other) > 0 {
			lastFailure = fmt.Sprintf("%.0f", r.answersAgain)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %s | %.0f | %s |\n", r.fault, r.acked, r.stored, r.missing,
			r.duplicates, r.unacked, r.status5xx, r.noAnswer, lastFailure, r.caughtUp, hpa)
	}
	return b.String()
}
