package explain_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/purchase-system/purchase-system/adapter/internal/explain"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
)

// A topic of two partitions with 10 records each, and a group that
// committed 5 of each: lag 10.
func lagFixture(t *testing.T, topic, group string) string {
	t.Helper()
	_, bootstrap := testkafka.Fake(t)
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	if _, err := adm.CreateTopic(ctx, 2, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	produce(t, cl, topic, 10)
	offsets := kadm.Offsets{}
	offsets.Add(kadm.Offset{Topic: topic, Partition: 0, At: 5, LeaderEpoch: -1})
	offsets.Add(kadm.Offset{Topic: topic, Partition: 1, At: 5, LeaderEpoch: -1})
	if err := adm.CommitAllOffsets(ctx, group, offsets); err != nil {
		t.Fatal(err)
	}
	return bootstrap
}

func produce(t *testing.T, cl *kgo.Client, topic string, perPartition int) {
	t.Helper()
	for p := int32(0); p < 2; p++ {
		for range perPartition {
			if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Partition: p, Value: []byte("x")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// explainServer serves the explain endpoint of an adapter whose lag source
// reads bootstrap, registering its lag gauges on reg; access is the rules'
// kafkaLag.access.
func explainServer(t *testing.T, bootstrap string, reg *prometheus.Registry, access func(string, lag.Query) (lag.Query, error)) (*lag.Source, *httptest.Server) {
	t.Helper()
	src, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, nil, lag.NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	api := metricsapi.New(nil, nil, nil, nil, nil, metricsapi.Options{LagEnabled: true, LagAccess: access})
	srv := httptest.NewServer(explain.Handler(&explain.Explainer{Kafka: src, API: api}))
	t.Cleanup(srv.Close)
	return src, srv
}

func explainLag(t *testing.T, srv *httptest.Server, ns, group, topic string) string {
	t.Helper()
	q := url.Values{"metric": {lag.MetricLag}, "namespace": {ns}, "metricSelector": {fmt.Sprintf("consumergroup=%s,topic=%s", group, topic)}}
	resp, err := http.Get(srv.URL + "/explain?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Explaining is read-only, through the endpoint operators use: it shows
// the lag as it is now, and the "as last served" gauge (and the history
// behind lag seconds) stays what the HPA's path left.
func TestExplainingALagServesNothingAndRecordsNothing(t *testing.T) {
	topic, group := "explained", "readers"
	bootstrap := lagFixture(t, topic, group)
	reg := prometheus.NewRegistry()
	src, srv := explainServer(t, bootstrap, reg, nil)
	sel, _ := labels.Parse(fmt.Sprintf("consumergroup=%s,topic=%s", group, topic))
	q, err := lag.ParseSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	if samples, err := src.Fetch(context.Background(), q); err != nil || samples[0].Value != 10 {
		t.Fatalf("served lag %v, %v; want 10", samples, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	produce(t, cl, topic, 3)
	cl.Close()

	out := explainLag(t, srv, "shop", group, topic)
	if !strings.Contains(out, "consumer group "+group) || !strings.Contains(out, `"value": "16"`) {
		t.Fatalf("explain does not show the lag of 16 now:\n%s", out)
	}
	want := fmt.Sprintf(`
# HELP adapter_kafka_consumergroup_lag Consumer group lag in messages, as last served (newest offset minus committed, summed over the topic's partitions).
# TYPE adapter_kafka_consumergroup_lag gauge
adapter_kafka_consumergroup_lag{consumergroup=%q,topic=%q} 10
`, group, topic)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "adapter_kafka_consumergroup_lag"); err != nil {
		t.Fatalf("explaining changed what the gauge says was served: %v", err)
	}
}

// Explain answers only what the HPA's path would: a namespace the rules'
// kafkaLag.access does not grant a group sees the refusal, not the
// group's offsets.
func TestExplainObeysKafkaLagAccess(t *testing.T) {
	topic, group := "guarded", "payments"
	bootstrap := lagFixture(t, topic, group)
	access := func(ns string, q lag.Query) (lag.Query, error) {
		if ns != "payments" {
			return q, errors.New("namespace " + ns + " may not read the lag of group " + strings.Join(q.Groups, ","))
		}
		return q, nil
	}
	_, srv := explainServer(t, bootstrap, prometheus.NewRegistry(), access)
	out := explainLag(t, srv, "shop", group, topic)
	if !strings.Contains(strings.ToLower(out), "forbidden") || strings.Contains(out, "consumer group "+group) || strings.Contains(out, topic+"[0]") {
		t.Fatalf("namespace shop, not granted the group: explain should refuse and show no offsets:\n%s", out)
	}
	if out := explainLag(t, srv, "payments", group, topic); !strings.Contains(out, topic+"[0]") {
		t.Fatalf("the granted namespace: explain shows no offsets:\n%s", out)
	}
}
