package migrate_test

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v2"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/purchase-system/purchase-system/adapter/internal/migrate"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// The seed guide's ScaledObject (the consumer on lag, threshold 100).
const seedScaledObject = `
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: customer-management-api-scaler
  namespace: purchase-system
spec:
  scaleTargetRef:
    name: customer-management-api
  minReplicaCount: 1
  maxReplicaCount: 5
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: kafka:9092
        consumerGroup: purchase-consumer-group
        topic: purchases
        lagThreshold: "100"  # Scale when lag > 100 messages
`

// This project's own consumer HPA (manifests/base/hpa.yaml) is the
// seed's ScaledObject moved over: the conversion gives its metric, target
// and bounds, plus KEDA's defaults the base leaves at the adapter's
// (offsetResetPolicy latest, the idle-consumer cap).
func TestSeedScaledObjectBecomesTheBaseHPA(t *testing.T) {
	results, err := migrate.KEDA(strings.NewReader(seedScaledObject))
	if err != nil {
		t.Fatal(err)
	}
	got := results[0].HPA
	base := baseConsumerHPA(t)
	if got.Spec.ScaleTargetRef != base.Spec.ScaleTargetRef || *got.Spec.MinReplicas != *base.Spec.MinReplicas || got.Spec.MaxReplicas != base.Spec.MaxReplicas {
		t.Errorf("target %+v %d-%d, want the base's %+v %d-%d", got.Spec.ScaleTargetRef, *got.Spec.MinReplicas, got.Spec.MaxReplicas,
			base.Spec.ScaleTargetRef, *base.Spec.MinReplicas, base.Spec.MaxReplicas)
	}
	var want *autoscalingv2.ExternalMetricSource
	for _, m := range base.Spec.Metrics {
		if m.External != nil {
			want = m.External
		}
	}
	e := got.Spec.Metrics[0].External
	if e.Metric.Name != want.Metric.Name || e.Target.Type != want.Target.Type || e.Target.AverageValue.Cmp(*want.Target.AverageValue) != 0 {
		t.Errorf("metric %s %s %s, want the base's %s %s %s", e.Metric.Name, e.Target.Type, e.Target.AverageValue, want.Metric.Name, want.Target.Type, want.Target.AverageValue)
	}
	for k, v := range want.Metric.Selector.MatchLabels {
		if e.Metric.Selector.MatchLabels[k] != v {
			t.Errorf("selector %v lacks the base's %s=%s", e.Metric.Selector.MatchLabels, k, v)
		}
	}
	if l := e.Metric.Selector.MatchLabels; l["offsetResetPolicy"] != "latest" || l["lagThreshold"] != "100" {
		t.Errorf("selector %v: want KEDA's defaults offsetResetPolicy=latest and the cap lagThreshold=100", l)
	}
	g := results[0].Grants
	if len(g) != 1 || (rules.LagAccess{Grants: g}).Allow("purchase-system", []string{"purchase-consumer-group"}, []string{"purchases"}) != nil {
		t.Errorf("grants %+v do not let purchase-system read its group", g)
	}
	if results[0].Bootstrap != "kafka:9092" {
		t.Errorf("bootstrap %q", results[0].Bootstrap)
	}
}

func baseConsumerHPA(t *testing.T) *autoscalingv2.HorizontalPodAutoscaler {
	t.Helper()
	b, err := os.ReadFile("../../../manifests/base/hpa.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var h autoscalingv2.HorizontalPodAutoscaler
		if err := dec.Decode(&h); err != nil {
			t.Fatalf("no HPA of customer-management-api in manifests/base/hpa.yaml: %v", err)
		}
		if h.Spec.ScaleTargetRef.Name == "customer-management-api" {
			return &h
		}
	}
}

// Every option KEDA's users rely on becomes its selector label or grant;
// what has no equivalent is a NOTE, never dropped in silence.
func TestKafkaOptionsConvert(t *testing.T) {
	results, err := migrate.KEDA(strings.NewReader(`
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: orders, namespace: shop, annotations: {autoscaling.keda.sh/paused-replicas: "0"}}
spec:
  scaleTargetRef: {name: orders-worker}
  pollingInterval: 15
  fallback: {failureThreshold: 3, replicas: 6}
  advanced:
    horizontalPodAutoscalerConfig:
      name: orders-hpa
      behavior: {scaleDown: {stabilizationWindowSeconds: 120}}
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: kafka.data:9092
        consumerGroup: orders
        topic: orders
        lagThreshold: "50"
        offsetResetPolicy: earliest
        allowIdleConsumers: "true"
        limitToPartitionsWithLag: "true"
        ensureEvenDistributionOfPartitions: "true"
        excludePersistentLag: "true"
        partitionLimitation: "0,2,10-20"
        activationLagThreshold: "5"
        scaleToZeroOnInvalidOffset: "true"
      authenticationRef: {name: kafka-auth}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := results[0]
	h := r.HPA
	if h.Name != "orders-hpa" || h.Namespace != "shop" || *h.Spec.MinReplicas != 0 || h.Spec.MaxReplicas != 100 ||
		h.Spec.Behavior == nil || *h.Spec.Behavior.ScaleDown.StabilizationWindowSeconds != 120 {
		t.Errorf("HPA %s/%s min %d max %d behavior %+v", h.Namespace, h.Name, *h.Spec.MinReplicas, h.Spec.MaxReplicas, h.Spec.Behavior)
	}
	want := map[string]string{"consumergroup": "orders", "topic": "orders", "offsetResetPolicy": "earliest",
		"limitToPartitionsWithLag": "true", "ensureEvenDistributionOfPartitions": "true", "lagThreshold": "50", "excludePersistentLag": "15s"}
	got := h.Spec.Metrics[0].External.Metric.Selector.MatchLabels
	for k, v := range want {
		if got[k] != v {
			t.Errorf("selector %s=%q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if r.Grants[0].PartitionLimitation != "0,2,10-20" {
		t.Errorf("grant %+v lacks partitionLimitation", r.Grants[0])
	}
	notes := strings.Join(r.Warnings, "\n")
	for _, want := range []string{"minReplicaCount 0", "fallback", "paused", "activationLagThreshold", "scaleToZeroOnInvalidOffset", "authenticationRef"} {
		if !strings.Contains(notes, want) {
			t.Errorf("no NOTE about %s in:\n%s", want, notes)
		}
	}
	var out, notesOut bytes.Buffer
	if err := migrate.Write(&out, &notesOut, results); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "kind: HorizontalPodAutoscaler") || strings.Contains(out.String(), "#") {
		t.Errorf("standard output is not the HPAs alone:\n%s", out.String())
	}
	for _, want := range []string{`partitionLimitation: "0,2,10-20"`, `--kafka-bootstrap-servers="kafka.data:9092"`} {
		if !strings.Contains(notesOut.String(), want) {
			t.Errorf("notes lack %q:\n%s", want, notesOut.String())
		}
	}
	if strings.Contains(out.String(), "status:") {
		t.Errorf("output carries a status:\n%s", out.String())
	}
}

func TestWhatCannotConvertIsAnError(t *testing.T) {
	for name, doc := range map[string]string{
		"a cpu trigger":    "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: a}\nspec: {scaleTargetRef: {name: x}, triggers: [{type: cpu, metadata: {value: '50'}}]}\n",
		"no consumerGroup": "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: a}\nspec: {scaleTargetRef: {name: x}, triggers: [{type: kafka, metadata: {topic: t}}]}\n",
		"not KEDA":         "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n",
		"empty":            "",
	} {
		if _, err := migrate.KEDA(strings.NewReader(doc)); err == nil {
			t.Errorf("%s: converted without an error", name)
		}
	}
}

// migrate-keda's standard output goes into kubectl apply: whatever the
// ScaledObjects hold, it is the HPAs and nothing else. A newline and a
// document separator in every free-text field (trigger metadata is an
// unvalidated map in KEDA's CRD) add no document; a name that is not a
// Kubernetes name, or a value that cannot be a label value, is refused.
func TestNothingInAScaledObjectAddsADocumentToTheOutput(t *testing.T) {
	const inject = "x\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: injected}\n#"
	q := strconv.Quote(inject)
	doc := `apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: orders, namespace: shop}
spec:
  scaleTargetRef: {name: consumer}
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: ` + q + `
        consumerGroup: orders
        topic: purchases
        partitionLimitation: ` + q + `
        unknownKey: ` + q + `
        ` + strconv.Quote("key"+inject) + `: "1"
`
	results, err := migrate.KEDA(strings.NewReader(doc))
	if err != nil {
		t.Fatalf("converting: %v", err)
	}
	var out, notes bytes.Buffer
	if err := migrate.Write(&out, &notes, results); err != nil {
		t.Fatal(err)
	}
	// Every document, strictly (a document with a key twice is two
	// documents run together), is an HPA, and there is one per
	// ScaledObject.
	var docs []string
	for _, d := range strings.Split("\n"+out.String(), "\n---\n") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, d)
		}
	}
	if len(docs) != len(results) {
		t.Fatalf("standard output holds %d documents for %d ScaledObjects:\n%s", len(docs), len(results), out.String())
	}
	for _, d := range docs {
		var obj map[string]any
		if err := yaml.UnmarshalStrict([]byte(d), &obj); err != nil || obj["kind"] != "HorizontalPodAutoscaler" {
			t.Fatalf("a document of standard output is not one HPA (%v, kind %v):\n%s", err, obj["kind"], d)
		}
	}
	for _, line := range strings.Split(notes.String(), "\n") {
		if strings.HasPrefix(line, "apiVersion:") || strings.HasPrefix(line, "kind:") || line == "---" {
			t.Errorf("a note line reads as YAML: %q\n%s", line, notes.String())
		}
	}

	for field, edit := range map[string][2]string{
		"namespace":      {"metadata: {name: orders, namespace: shop}", "metadata: {name: orders, namespace: " + q + "}"},
		"name":           {"metadata: {name: orders, namespace: shop}", "metadata: {name: " + q + ", namespace: shop}"},
		"consumer group": {"consumerGroup: orders", "consumerGroup: " + q},
		"topic":          {"topic: purchases", "topic: " + q},
	} {
		results, err := migrate.KEDA(strings.NewReader(strings.Replace(doc, edit[0], edit[1], 1)))
		if err == nil {
			err = migrate.Write(io.Discard, io.Discard, results)
		}
		if err == nil {
			t.Errorf("a %s with a newline and a document in it was written, want it refused", field)
		}
	}
}
