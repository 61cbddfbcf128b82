package clustertest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

var deployOnce sync.Once

// deploySystem applies systemOverlay (the services, the adapter and its
// APIServices) once and waits for the deployments.
func deploySystem(t testing.TB) {
	t.Helper()
	deployOnce.Do(func() {
		kubectl(t, "apply", "-k", filepath.Join(repoRoot, systemOverlay))
		for _, d := range []string{"purchase-system/customer-web-server", "purchase-system/customer-management-api", "monitoring/purchase-metrics-adapter"} {
			ns, name, _ := strings.Cut(d, "/")
			kubectl(t, "-n", ns, "rollout", "status", "deployment/"+name, "--timeout=180s")
		}
	})
	testproc.Eventually(t, 60*time.Second, "adapter APIServices available", func() error {
		for _, api := range []string{"v1beta2.custom.metrics.k8s.io", "v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io"} {
			out, err := execKubectl("get", "apiservice", api, "-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}`)
			if err != nil || strings.TrimSpace(out) != "True" {
				return fmt.Errorf("%s available=%q %v", api, out, err)
			}
		}
		return nil
	})
}

type metricValueList struct {
	Items []struct {
		DescribedObject struct{ Kind, Namespace, Name string } `json:"describedObject"`
		MetricName      string                                 `json:"metricName"`
		MetricLabels    map[string]string                      `json:"metricLabels"`
		Value           string                                 `json:"value"`
		Timestamp       time.Time                              `json:"timestamp"`
	} `json:"items"`
}

func rawJSON(args ...string) (metricValueList, string, error) {
	out, err := execKubectl(append([]string{"get", "--raw"}, args...)...)
	var l metricValueList
	if err == nil {
		err = json.Unmarshal([]byte(out), &l)
	}
	return l, out, err
}

// milli parses a Kubernetes quantity as served by the adapter.
func milli(q string) float64 {
	if v, ok := strings.CutSuffix(q, "m"); ok {
		n, _ := strconv.ParseFloat(v, 64)
		return n / 1000
	}
	n, _ := strconv.ParseFloat(q, 64)
	return n
}

func TestCustomMetricsThroughTheAPIServer(t *testing.T) {
	deploySystem(t)
	// Load on each web pod, then the adapter's value per pod must be what
	// Prometheus computes for the same rule.
	pods := waitReplicas(t, "purchase-system", "app=customer-web-server", 2)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	for _, p := range pods {
		go func() {
			tick := time.NewTicker(25 * time.Millisecond) // 40 req/s per pod
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					resp, err := http.Post("http://"+p.Status.PodIP+":8080/buy", "application/json", strings.NewReader(`{"username":"e2e","userid":"adapter","price":1}`))
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}
		}()
	}
	// The metric is listed once its series exist (they appear with the
	// first request a pod serves).
	testproc.Eventually(t, 60*time.Second, "the metric in v1beta2 and v1beta1 discovery", func() error {
		for _, v := range []string{"v1beta2", "v1beta1"} {
			out, err := execKubectl("get", "--raw", "/apis/custom.metrics.k8s.io/"+v)
			if err != nil || !strings.Contains(out, `"name":"pods/flask_http_request_per_second"`) {
				return fmt.Errorf("%s: %v %s", v, err, out)
			}
		}
		return nil
	})
	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_per_second?labelSelector=" + url.QueryEscape("app=customer-web-server")
	testproc.Eventually(t, 90*time.Second, "one value per web pod, matching Prometheus", func() error {
		l, raw, err := rawJSON(path)
		if err != nil {
			return fmt.Errorf("%v: %s", err, raw)
		}
		if len(l.Items) != len(pods) {
			return fmt.Errorf("%d values for %d pods: %s", len(l.Items), len(pods), raw)
		}
		// The adapter evaluated the rule at its fetch, between the newest
		// scrape (the timestamp it serves) and a scrape interval plus its
		// refresh interval later; with the load just started the [2m] rate
		// is still rising, so its value must lie between Prometheus' own
		// at both ends.
		q := `sum by (pod) (rate(flask_http_request_total{namespace="purchase-system",app="customer-web-server"}[2m]))`
		for _, it := range l.Items {
			// Both ends must be in the past for Prometheus to have them.
			time.Sleep(time.Until(it.Timestamp.Add(13 * time.Second)))
			var bounds []float64
			for _, at := range []time.Time{it.Timestamp.Add(-time.Second), it.Timestamp.Add(12 * time.Second)} {
				for _, r := range promQuery(t, q, at) {
					if r.Metric["pod"] == it.DescribedObject.Name {
						v, _ := strconv.ParseFloat(r.Value[1].(string), 64)
						bounds = append(bounds, v)
					}
				}
			}
			got := milli(it.Value)
			if len(bounds) != 2 || bounds[1] < 1 {
				return fmt.Errorf("pod %s: Prometheus has no rate yet (%v)", it.DescribedObject.Name, bounds)
			}
			lo, hi := min(bounds[0], bounds[1]), max(bounds[0], bounds[1])
			if got < lo*0.97 || got > hi*1.03 {
				return fmt.Errorf("pod %s: adapter %v, Prometheus %v..%v around its timestamp", it.DescribedObject.Name, got, lo, hi)
			}
			if time.Since(it.Timestamp) > 30*time.Second {
				return fmt.Errorf("pod %s: timestamp %v is old", it.DescribedObject.Name, it.Timestamp)
			}
		}
		return nil
	})

	// The seed's own HPA asks for the series name; the answer says which
	// metric to use instead.
	_, raw, err := rawJSON("/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_total")
	if err == nil || !strings.Contains(raw, "serves as flask_http_request_per_second") {
		t.Fatalf("unknown metric: %v %s", err, raw)
	}
}

func TestExternalLagThroughTheAPIServer(t *testing.T) {
	deploySystem(t)
	topic := fmt.Sprintf("lag-e2e-%d", time.Now().UnixNano())
	group := topic + "-group"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	producer, err := kgo.NewClient(kgo.SeedBrokers(hostKafka), kgo.AllowAutoTopicCreation(), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	const produced, consumed = 300, 120
	for i := range produced {
		producer.Produce(ctx, &kgo.Record{Value: []byte(strconv.Itoa(i))}, nil)
	}
	if err := producer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	consumer, err := kgo.NewClient(kgo.SeedBrokers(hostKafka), kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	if err != nil {
		t.Fatal(err)
	}
	var recs []*kgo.Record
	for len(recs) < consumed {
		f := consumer.PollRecords(ctx, consumed-len(recs))
		if errs := f.Errors(); len(errs) > 0 {
			t.Fatal(errs)
		}
		recs = append(recs, f.Records()...)
	}
	if err := consumer.CommitRecords(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	consumer.Close()

	sel := url.QueryEscape("consumergroup=" + group + ",topic=" + topic)
	// The group is not granted to any namespace: refused, saying why.
	if _, raw, err := rawJSON("/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=" + sel); err == nil ||
		!strings.Contains(raw, "may not read the lag of consumer group "+group) {
		t.Fatalf("an ungranted group: %v %s, want forbidden", err, raw)
	}
	// Granted in the adapter's config (a hot reload of its ConfigMap) to
	// the namespace lag-e2e.
	ctx2 := context.Background()
	cm, err := client.CoreV1().ConfigMaps("monitoring").Get(ctx2, "purchase-metrics-adapter-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := cm.Data["config.yaml"]
	cm.Data["config.yaml"] = orig + "    - {namespace: lag-e2e, consumerGroups: [\"*\"], topics: [\"*\"]}\n"
	if _, err := client.CoreV1().ConfigMaps("monitoring").Update(ctx2, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cm, err := client.CoreV1().ConfigMaps("monitoring").Get(context.Background(), "purchase-metrics-adapter-config", metav1.GetOptions{})
		if err == nil {
			cm.Data["config.yaml"] = orig
			_, _ = client.CoreV1().ConfigMaps("monitoring").Update(context.Background(), cm, metav1.UpdateOptions{})
		}
	})
	// The kubelet updates the mounted ConfigMap at its next pod sync
	// (syncFrequency 10 s on the local node), then the adapter reloads.
	testproc.Eventually(t, 90*time.Second, "lag of the test group", func() error {
		l, raw, err := rawJSON("/apis/external.metrics.k8s.io/v1beta1/namespaces/lag-e2e/kafka_consumergroup_lag?labelSelector=" + sel)
		if err != nil {
			return fmt.Errorf("%v: %s", err, raw)
		}
		if len(l.Items) != 1 || milli(l.Items[0].Value) != produced-consumed || l.Items[0].MetricLabels["topic"] != topic {
			return fmt.Errorf("got %s, want lag %d", raw, produced-consumed)
		}
		return nil
	})
}

func TestMetricsAPIAuthentication(t *testing.T) {
	deploySystem(t)
	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_per_second"
	// The HPA controller's service account may read the metrics...
	hpa := "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
	if out, err := execKubectl("get", "--raw", path, "--as="+hpa); err != nil && !strings.Contains(out, "no fresh value") && !strings.Contains(out, "NotFound") {
		t.Fatalf("as the HPA: %v %s", err, out)
	}
	// ...and the adapter saw who asked: the API server passed the caller's
	// identity through the aggregation layer.
	testproc.Eventually(t, 20*time.Second, "the adapter logged the HPA's identity", func() error {
		logs, err := execKubectl("-n", "monitoring", "logs", "deploy/purchase-metrics-adapter")
		if err != nil {
			return err
		}
		if !strings.Contains(logs, `"user":"`+hpa+`"`) {
			return fmt.Errorf("no request from %s in the adapter's log", hpa)
		}
		return nil
	})
	// A user RBAC does not allow is refused.
	if out, err := execKubectl("get", "--raw", path, "--as=nobody"); err == nil || !strings.Contains(out, "forbidden") {
		t.Fatalf("as nobody: %v %s, want forbidden", err, out)
	}
	// Without credentials, through the API server: refused.
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := insecure.Get("https://10.88.0.1:6443" + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous through the API server: %d, want 401 or 403", resp.StatusCode)
	}
	// Straight to the adapter's pod, bypassing the API server: refused too.
	pods, err := readyPods(context.Background(), "monitoring", "app=purchase-metrics-adapter")
	if err != nil || len(pods) == 0 {
		t.Fatalf("adapter pod: %v", err)
	}
	adapterIP := pods[0].Status.PodIP
	resp, err = insecure.Get("https://" + adapterIP + ":6443" + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous straight to the adapter: %d, want 401 or 403", resp.StatusCode)
	}
	// The adapter's own metrics need no credentials.
	resp, err = http.Get("http://" + adapterIP + ":9102/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "adapter_request_duration_seconds") {
		t.Fatalf("self-metrics: %d %.300s", resp.StatusCode, b)
	}
}
