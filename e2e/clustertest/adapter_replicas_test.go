package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// The adapter scales out: each replica keeps its own store and reads the
// backends itself (no state is shared), so two replicas behind its Service
// both answer the HPA's questions — the API server spreads them over the
// Service's endpoints — and answer them alike.
func TestTwoAdapterReplicasBehindTheService(t *testing.T) {
	deploySystem(t)
	kubectl(t, "-n", "monitoring", "scale", "deployment/purchase-metrics-adapter", "--replicas=2")
	t.Cleanup(func() {
		kubectl(t, "-n", "monitoring", "scale", "deployment/purchase-metrics-adapter", "--replicas=1")
		waitReplicas(t, "monitoring", "app=purchase-metrics-adapter", 1)
	})
	pods := waitReplicas(t, "monitoring", "app=purchase-metrics-adapter", 2)
	const path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=consumergroup%3Dpurchase-consumer-group%2Ctopic%3Dpurchases"

	served := func() (total [2]float64) {
		for i, p := range pods {
			resp, err := http.Get("http://" + p.Status.PodIP + ":9102/metrics")
			if err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				if l := sc.Text(); strings.HasPrefix(l, "adapter_request_duration_seconds_count{") && strings.Contains(l, `api="external"`) {
					v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
					total[i] += v
				}
			}
			resp.Body.Close()
		}
		return total
	}
	get := aggregatedClient(t)
	// A replica just Ready can still take the API server for anonymous
	// for a moment (its front-proxy CA arrives after readiness; noted as
	// a defect to fix in the readiness check): the comparison starts once
	// ten requests in a row succeed.
	testproc.Eventually(t, 30*time.Second, "ten requests in a row through the API server", func() error {
		for range 10 {
			if _, err := get(path); err != nil {
				return err
			}
		}
		return nil
	})
	before := served()
	for range 40 {
		if _, err := get(path); err != nil {
			t.Fatalf("through the API server with two replicas: %v", err)
		}
	}
	after := served()
	for i, p := range pods {
		if after[i] <= before[i] {
			t.Errorf("replica %s answered none of 40 requests through the Service (%v → %v)", p.Name, before, after)
		}
	}

	// Each replica, asked directly as the API server asks it, gives the
	// same value.
	direct := directAs(t, "system:serviceaccount:kube-system:horizontal-pod-autoscaler", "system:serviceaccounts")
	var values []string
	for _, p := range pods {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var raw []byte
		var err error
		for ctx.Err() == nil {
			if raw, err = direct("https://" + p.Status.PodIP + ":6443" + path); err == nil {
				break
			}
			time.Sleep(time.Second)
		}
		cancel()
		if err != nil {
			t.Fatalf("replica %s: %v", p.Name, err)
		}
		var l struct {
			Items []struct{ Value string } `json:"items"`
		}
		if err := json.Unmarshal(raw, &l); err != nil || len(l.Items) != 1 {
			t.Fatalf("replica %s: %v %.300s", p.Name, err, raw)
		}
		values = append(values, l.Items[0].Value)
	}
	if values[0] != values[1] {
		t.Fatalf("the replicas answer %v: want the same lag", values)
	}
	t.Logf("two replicas: requests through the Service %v → %v; lag %s on both", before, after, values[0])
}
