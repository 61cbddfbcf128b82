// Package migrate turns what users of KEDA run today into what this
// adapter serves: a ScaledObject with kafka triggers becomes an HPA on
// kafka_consumergroup_lag, its options selector labels, and the
// kafkaLag.access grant the adapter's configuration needs. What has no
// equivalent is said, never dropped in silence.
package migrate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1) a
// conversion reads.
type scaledObject struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval"`
		CooldownPeriod  *int32 `json:"cooldownPeriod"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		Fallback        any    `json:"fallback"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig *struct {
				Name     string                                         `json:"name"`
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
			ScalingModifiers any `json:"scalingModifiers"`
		} `json:"advanced"`
		Triggers []struct {
			Type              string            `json:"type"`
			Name              string            `json:"name"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef any               `json:"authenticationRef"`
		} `json:"triggers"`
	} `json:"spec"`
}

// KEDA defaults this conversion keeps (keda.sh docs, Kafka scaler and
// ScaledObject spec).
const (
	kedaLagThreshold   = "10"
	kedaOffsetReset    = "latest"
	kedaPolling        = 30
	kedaMinReplicas    = 0
	kedaMaxReplicas    = 100
	kedaHPANamePrefix  = "keda-hpa-"
	lagMetric          = lag.MetricLag
	supportedKafkaKeys = "bootstrapServers consumerGroup topic lagThreshold activationLagThreshold offsetResetPolicy allowIdleConsumers excludePersistentLag limitToPartitionsWithLag ensureEvenDistributionOfPartitions partitionLimitation version sasl tls"
)

// Result is one ScaledObject converted.
type Result struct {
	HPA      *autoscalingv2.HorizontalPodAutoscaler
	Grants   []rules.LagGrant
	Warnings []string // what has no equivalent, or differs
	// Bootstrap is the triggers' bootstrapServers: the adapter's
	// --kafka-bootstrap-servers (one Kafka cluster per adapter).
	Bootstrap string
}

// KEDA converts every ScaledObject in a YAML stream (other kinds are an
// error: nothing is silently left out).
func KEDA(r io.Reader) ([]Result, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var out []Result
	for i := 0; ; i++ {
		var so scaledObject
		if err := dec.Decode(&so); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if so.Kind == "" && so.APIVersion == "" {
			continue // an empty document
		}
		if so.Kind != "ScaledObject" || !strings.HasPrefix(so.APIVersion, "keda.sh/") {
			return nil, fmt.Errorf("document %d: %s %s is not a KEDA ScaledObject (keda.sh/v1alpha1)", i+1, so.APIVersion, so.Kind)
		}
		res, err := convert(so)
		if err != nil {
			return nil, fmt.Errorf("ScaledObject %s/%s: %w", so.Metadata.Namespace, so.Metadata.Name, err)
		}
		out = append(out, res)
	}
	if len(out) == 0 {
		return nil, errors.New("no ScaledObject in the input")
	}
	return out, nil
}

func convert(so scaledObject) (Result, error) {
	var res Result
	warn := func(format string, a ...any) { res.Warnings = append(res.Warnings, fmt.Sprintf(format, a...)) }
	spec := so.Spec
	if spec.ScaleTargetRef.Name == "" {
		return res, errors.New("spec.scaleTargetRef.name is empty")
	}
	ns := so.Metadata.Namespace
	if ns == "" {
		ns = "default"
		warn("metadata.namespace is not set: the HPA and the grant use %q", ns)
	}
	hpa := &autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: metav1.ObjectMeta{Name: kedaHPANamePrefix + so.Metadata.Name, Namespace: ns, Labels: so.Metadata.Labels},
	}
	ref := spec.ScaleTargetRef
	hpa.Spec.ScaleTargetRef = autoscalingv2.CrossVersionObjectReference{APIVersion: or(ref.APIVersion, "apps/v1"), Kind: or(ref.Kind, "Deployment"), Name: ref.Name}
	minR, maxR := int32(kedaMinReplicas), int32(kedaMaxReplicas)
	if spec.MinReplicaCount != nil {
		minR = *spec.MinReplicaCount
	}
	if spec.MaxReplicaCount != nil {
		maxR = *spec.MaxReplicaCount
	}
	if minR == 0 {
		// Every metric converted is External, which is what an HPA at 0
		// replicas wakes on.
		warn("minReplicaCount 0 (KEDA's default): minReplicas 0, the HPA's own scale to zero (HPAScaleToZero: on by default since Kubernetes 1.37, a feature gate before); set minReplicas: 1 to keep a consumer running")
	}
	hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas = &minR, maxR
	if adv := spec.Advanced; adv != nil {
		if c := adv.HorizontalPodAutoscalerConfig; c != nil {
			if c.Name != "" {
				hpa.Name = c.Name
			}
			hpa.Spec.Behavior = c.Behavior
		}
		if adv.ScalingModifiers != nil {
			warn("advanced.scalingModifiers (a formula over the triggers) has no HPA equivalent: not converted; the HPA scales on the largest of its metrics")
		}
	}
	if spec.Fallback != nil {
		warn("fallback (replicas while the scaler fails) has no HPA equivalent: on a lag error the HPA keeps its current replicas (the adapter answers an error, never 0)")
	}
	if len(so.Metadata.Annotations) > 0 {
		for k := range so.Metadata.Annotations {
			if strings.HasPrefix(k, "autoscaling.keda.sh/paused") {
				warn("annotation %s (pause) has no HPA equivalent: set minReplicas = maxReplicas, or delete the HPA", k)
			}
		}
	}
	polling := int32(kedaPolling)
	if spec.PollingInterval != nil {
		polling = *spec.PollingInterval
	}
	if spec.CooldownPeriod != nil {
		warn("cooldownPeriod applies to scaling to zero only; with minReplicas >= 1 the HPA's behavior.scaleDown.stabilizationWindowSeconds (default 300 s) is its counterpart")
	}
	for i, t := range spec.Triggers {
		if t.Type != "kafka" {
			return res, fmt.Errorf("triggers[%d]: type %q: only kafka triggers convert to this adapter's metrics", i, t.Type)
		}
		m, grant, bootstrap, err := kafkaMetric(t.Metadata, polling, ns, func(f string, a ...any) { warn("triggers[%d]: "+f, append([]any{i}, a...)...) })
		if err != nil {
			return res, fmt.Errorf("triggers[%d]: %w", i, err)
		}
		if t.AuthenticationRef != nil {
			warn("triggers[%d]: authenticationRef: the adapter connects with its own credentials (--kafka-extra-config with librdkafka's names: security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.location, …)", i)
		}
		if res.Bootstrap != "" && bootstrap != res.Bootstrap {
			warn("triggers[%d]: bootstrapServers %s differs from %s: one adapter reads one Kafka cluster", i, bootstrap, res.Bootstrap)
		}
		if res.Bootstrap == "" {
			res.Bootstrap = bootstrap
		}
		hpa.Spec.Metrics = append(hpa.Spec.Metrics, m)
		res.Grants = append(res.Grants, grant)
	}
	if len(hpa.Spec.Metrics) == 0 {
		return res, errors.New("no trigger")
	}
	res.HPA = hpa
	return res, nil
}

// kafkaMetric is one kafka trigger as an external metric and its grant.
func kafkaMetric(md map[string]string, polling int32, ns string, warn func(string, ...any)) (autoscalingv2.MetricSpec, rules.LagGrant, string, error) {
	var keys []string
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "scaleToZeroOnInvalidOffset":
			warn("%s is not supported: not converted", k)
		case "activationLagThreshold":
			warn("activationLagThreshold has no HPA meaning while minReplicas >= 1: not converted")
		default:
			if !strings.Contains(" "+supportedKafkaKeys+" ", " "+k+" ") {
				warn("metadata %s is not a Kafka scaler option this conversion knows: not converted", k)
			}
		}
	}
	group := md["consumerGroup"]
	if group == "" {
		return autoscalingv2.MetricSpec{}, rules.LagGrant{}, "", errors.New("metadata.consumerGroup is required (the adapter reads one group's lag per metric)")
	}
	threshold := or(md["lagThreshold"], kedaLagThreshold)
	if _, err := strconv.ParseInt(threshold, 10, 64); err != nil {
		return autoscalingv2.MetricSpec{}, rules.LagGrant{}, "", fmt.Errorf("lagThreshold %q is not a whole number", threshold)
	}
	labels := map[string]string{lag.LabelGroup: group, lag.LabelOffsetReset: or(md["offsetResetPolicy"], kedaOffsetReset)}
	grant := rules.LagGrant{Namespace: ns, ConsumerGroups: []string{group}, Topics: []string{"*"}, PartitionLimitation: md["partitionLimitation"]}
	if topic := md["topic"]; topic != "" {
		labels[lag.LabelTopic] = topic
		grant.Topics = []string{topic}
	} else {
		warn("no topic: the lag of every topic the group committed on, as KEDA; the grant allows any topic")
	}
	// KEDA caps the lag at lagThreshold × partitions unless
	// allowIdleConsumers: the adapter does the same with the label.
	if !strings.EqualFold(md["allowIdleConsumers"], "true") {
		labels[lag.LabelLagThreshold] = threshold
	}
	if strings.EqualFold(md["limitToPartitionsWithLag"], "true") {
		labels[lag.LabelLimitToPartitionsWithLag] = "true"
		labels[lag.LabelLagThreshold] = threshold
	}
	if strings.EqualFold(md["ensureEvenDistributionOfPartitions"], "true") {
		labels[lag.LabelEvenDistribution] = "true"
		labels[lag.LabelLagThreshold] = threshold
	}
	if strings.EqualFold(md["excludePersistentLag"], "true") {
		// KEDA drops a partition whose commit did not move since its last
		// read (one pollingInterval); the adapter measures it in time.
		labels[lag.LabelExcludePersistentLag] = (time.Duration(polling) * time.Second).String()
	}
	avg, err := resource.ParseQuantity(threshold)
	if err != nil {
		return autoscalingv2.MetricSpec{}, rules.LagGrant{}, "", fmt.Errorf("lagThreshold %q: %w", threshold, err)
	}
	m := autoscalingv2.MetricSpec{Type: autoscalingv2.ExternalMetricSourceType, External: &autoscalingv2.ExternalMetricSource{
		Metric: autoscalingv2.MetricIdentifier{Name: lagMetric, Selector: &metav1.LabelSelector{MatchLabels: labels}},
		Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: &avg},
	}}
	return m, grant, md["bootstrapServers"], nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Write prints the HPAs as one YAML stream on out, and on notes, for
// each, the grants to add to the adapter's kafkaLag.access, the bootstrap
// servers and what did not convert. Only HPA documents go to out, which
// docs/moving-over.md pipes into kubectl apply: everything taken from the input
// there is marshalled YAML, and every free text on notes is quoted (a
// newline in a trigger's metadata cannot end a comment and start a
// document). A name that is not a Kubernetes name is refused.
func Write(out, notes io.Writer, results []Result) error {
	for _, r := range results {
		for what, v := range map[string]string{"namespace": r.HPA.Namespace, "name": r.HPA.Name, "scaleTargetRef.name": r.HPA.Spec.ScaleTargetRef.Name} {
			if errs := validation.IsDNS1123Subdomain(v); len(errs) > 0 {
				return fmt.Errorf("ScaledObject %q/%q: %s %q is not a Kubernetes name: %s", r.HPA.Namespace, r.HPA.Name, what, v, strings.Join(errs, "; "))
			}
		}
		for _, m := range r.HPA.Spec.Metrics {
			if m.External == nil || m.External.Metric.Selector == nil {
				continue
			}
			for k, v := range m.External.Metric.Selector.MatchLabels {
				if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
					return fmt.Errorf("ScaledObject %s/%s: %s %q cannot be a selector label value: %s", r.HPA.Namespace, r.HPA.Name, k, v, strings.Join(errs, "; "))
				}
			}
		}
	}
	var b, n bytes.Buffer
	for i, r := range results {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&n, "ScaledObject %s/%s → HorizontalPodAutoscaler %s/%s. Add to the adapter's configuration:\n", r.HPA.Namespace, strings.TrimPrefix(r.HPA.Name, kedaHPANamePrefix), r.HPA.Namespace, r.HPA.Name)
		n.WriteString("  kafkaLag:\n    access:\n")
		for _, g := range r.Grants {
			line := fmt.Sprintf("      - {namespace: %s, consumerGroups: [%s], topics: [%s]", strconv.Quote(g.Namespace), quoteAll(g.ConsumerGroups), quoteAll(g.Topics))
			if g.PartitionLimitation != "" {
				line += fmt.Sprintf(", partitionLimitation: %q", g.PartitionLimitation)
			}
			n.WriteString(line + "}\n")
		}
		if r.Bootstrap != "" {
			fmt.Fprintf(&n, "and run the adapter with --kafka-bootstrap-servers=%s\n", strconv.Quote(r.Bootstrap))
		}
		for _, warning := range r.Warnings {
			fmt.Fprintf(&n, "NOTE: %s\n", strconv.Quote(warning))
		}
		y, err := yaml.Marshal(r.HPA)
		if err != nil {
			return err
		}
		b.Write(dropStatus(y))
	}
	if _, err := notes.Write(n.Bytes()); err != nil {
		return err
	}
	_, err := out.Write(b.Bytes())
	return err
}

func quoteAll(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return strings.Join(q, ", ")
}

// dropStatus removes the empty status and creationTimestamp the API
// types always marshal.
func dropStatus(y []byte) []byte {
	var out []string
	skip := false
	for _, l := range strings.Split(string(y), "\n") {
		switch {
		case l == "status:":
			skip = true
			continue
		case skip && strings.HasPrefix(l, " "):
			continue
		case strings.TrimSpace(l) == "creationTimestamp: null":
			continue
		}
		skip = false
		out = append(out, l)
	}
	return []byte(strings.Join(out, "\n"))
}
