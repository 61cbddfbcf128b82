// Package autoscaling reads what the HPAs of the system see and decide:
// replicas, each metric's value against its target, the per-pod request
// rate and the consumer lag as the metrics adapter serves them. The
// end-to-end scenario samples it into its timeline; make load prints it.
package autoscaling

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The system's names: what the HPAs scale and on which metrics.
const (
	WebServer      = "customer-web-server"
	Consumer       = "customer-management-api"
	RequestRate    = "flask_http_request_per_second"
	Lag            = "kafka_consumergroup_lag"
	LagSelector    = "consumergroup=purchase-consumer-group,topic=purchases"
	WebPodSelector = "app=customer-web-server"
)

// HPA is one autoscaler's state.
type HPA struct {
	Name             string
	Current, Desired int32
	Min, Max         int32
	// Metrics: each metric's current value and target, in the HPA's
	// order, "<unknown>" when the HPA has no value.
	Metrics []Metric
	// Conditions by type: status and message.
	Conditions map[string]Condition
}

// Metric is one metric of an HPA.
type Metric struct {
	Name, Current, Target string
	Known                 bool
	// Resource: a CPU or memory metric, which metrics-server serves (the
	// others come from the metrics adapter).
	Resource bool
}

// Condition is an HPA condition.
type Condition struct {
	Status, Reason, Message string
}

// Snapshot is the system's autoscaling state at one moment.
type Snapshot struct {
	At   time.Time
	HPAs map[string]HPA
	// PerPod is the request rate the adapter serves for each web server
	// pod; PerPodAverage their mean (what the HPA compares with 100).
	PerPod        map[string]float64
	PerPodAverage float64
	PerPodErr     error
	// Lag is the consumer group's lag as the adapter serves it.
	Lag    float64
	LagErr error
}

// Read takes a snapshot of namespace ns.
func Read(ctx context.Context, c kubernetes.Interface, ns string) (Snapshot, error) {
	s := Snapshot{At: time.Now(), HPAs: map[string]HPA{}}
	list, err := c.AutoscalingV2().HorizontalPodAutoscalers(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return s, fmt.Errorf("listing HPAs in %s: %w", ns, err)
	}
	for _, h := range list.Items {
		s.HPAs[h.Name] = fromAPI(h)
	}
	s.PerPod, s.PerPodErr = perPodRate(ctx, c, ns)
	if s.PerPodErr == nil && len(s.PerPod) > 0 {
		var sum float64
		for _, v := range s.PerPod {
			sum += v
		}
		s.PerPodAverage = sum / float64(len(s.PerPod))
	}
	s.Lag, s.LagErr = lag(ctx, c, ns)
	return s, nil
}

func fromAPI(h autoscalingv2.HorizontalPodAutoscaler) HPA {
	out := HPA{Name: h.Name, Current: h.Status.CurrentReplicas, Desired: h.Status.DesiredReplicas, Max: h.Spec.MaxReplicas,
		Conditions: map[string]Condition{}}
	if h.Spec.MinReplicas != nil {
		out.Min = *h.Spec.MinReplicas
	}
	for _, c := range h.Status.Conditions {
		out.Conditions[string(c.Type)] = Condition{Status: string(c.Status), Reason: c.Reason, Message: c.Message}
	}
	for _, spec := range h.Spec.Metrics {
		m := Metric{Name: specName(spec), Target: target(spec), Current: "<unknown>",
			Resource: spec.Type == autoscalingv2.ResourceMetricSourceType}
		// The status lists metrics in the spec's order, but only those it
		// could compute: match by name.
		for _, st := range h.Status.CurrentMetrics {
			if statusName(st) == m.Name {
				m.Current, m.Known = current(st, spec), true
			}
		}
		out.Metrics = append(out.Metrics, m)
	}
	return out
}

func specName(m autoscalingv2.MetricSpec) string {
	switch m.Type {
	case autoscalingv2.ResourceMetricSourceType:
		return string(m.Resource.Name)
	case autoscalingv2.PodsMetricSourceType:
		return m.Pods.Metric.Name
	case autoscalingv2.ExternalMetricSourceType:
		return m.External.Metric.Name
	case autoscalingv2.ObjectMetricSourceType:
		return m.Object.Metric.Name
	}
	return string(m.Type)
}

func statusName(m autoscalingv2.MetricStatus) string {
	switch m.Type {
	case autoscalingv2.ResourceMetricSourceType:
		if m.Resource != nil {
			return string(m.Resource.Name)
		}
	case autoscalingv2.PodsMetricSourceType:
		if m.Pods != nil {
			return m.Pods.Metric.Name
		}
	case autoscalingv2.ExternalMetricSourceType:
		if m.External != nil {
			return m.External.Metric.Name
		}
	case autoscalingv2.ObjectMetricSourceType:
		if m.Object != nil {
			return m.Object.Metric.Name
		}
	}
	return string(m.Type)
}

func target(m autoscalingv2.MetricSpec) string {
	var t autoscalingv2.MetricTarget
	switch m.Type {
	case autoscalingv2.ResourceMetricSourceType:
		t = m.Resource.Target
	case autoscalingv2.PodsMetricSourceType:
		t = m.Pods.Target
	case autoscalingv2.ExternalMetricSourceType:
		t = m.External.Target
	case autoscalingv2.ObjectMetricSourceType:
		t = m.Object.Target
	}
	switch {
	case t.AverageUtilization != nil:
		return fmt.Sprintf("%d%%", *t.AverageUtilization)
	case t.AverageValue != nil:
		return Format(t.AverageValue.AsApproximateFloat64())
	case t.Value != nil:
		return Format(t.Value.AsApproximateFloat64())
	}
	return "?"
}

func current(st autoscalingv2.MetricStatus, spec autoscalingv2.MetricSpec) string {
	var v autoscalingv2.MetricValueStatus
	switch st.Type {
	case autoscalingv2.ResourceMetricSourceType:
		v = st.Resource.Current
	case autoscalingv2.PodsMetricSourceType:
		v = st.Pods.Current
	case autoscalingv2.ExternalMetricSourceType:
		v = st.External.Current
	case autoscalingv2.ObjectMetricSourceType:
		v = st.Object.Current
	}
	switch {
	case v.AverageUtilization != nil:
		return fmt.Sprintf("%d%%", *v.AverageUtilization)
	case v.AverageValue != nil:
		return Format(v.AverageValue.AsApproximateFloat64())
	case v.Value != nil:
		return Format(v.Value.AsApproximateFloat64())
	}
	return "<unknown>"
}

// Format prints a metric value the way a person reads it: 115.5, not
// 115533m.
func Format(v float64) string {
	s := fmt.Sprintf("%.1f", v)
	return strings.TrimSuffix(s, ".0")
}

// valueList is the part of a custom or external metrics answer read here.
type valueList struct {
	Items []struct {
		DescribedObject struct{ Name string } `json:"describedObject"`
		Value           resource.Quantity     `json:"value"`
	} `json:"items"`
}

func getRaw(ctx context.Context, c kubernetes.Interface, path, selector string) (valueList, error) {
	var l valueList
	b, err := c.Discovery().RESTClient().Get().AbsPath(path).Param("labelSelector", selector).DoRaw(ctx)
	if err != nil {
		return l, fmt.Errorf("GET %s?labelSelector=%s: %w", path, url.QueryEscape(selector), err)
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("GET %s: %w", path, err)
	}
	return l, nil
}

func perPodRate(ctx context.Context, c kubernetes.Interface, ns string) (map[string]float64, error) {
	l, err := getRaw(ctx, c, fmt.Sprintf("/apis/custom.metrics.k8s.io/v1beta2/namespaces/%s/pods/*/%s", ns, RequestRate), WebPodSelector)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, it := range l.Items {
		out[it.DescribedObject.Name] = it.Value.AsApproximateFloat64()
	}
	return out, nil
}

func lag(ctx context.Context, c kubernetes.Interface, ns string) (float64, error) {
	l, err := getRaw(ctx, c, fmt.Sprintf("/apis/external.metrics.k8s.io/v1beta1/namespaces/%s/%s", ns, Lag), LagSelector)
	if err != nil {
		return 0, err
	}
	if len(l.Items) != 1 {
		return 0, fmt.Errorf("%d lag values, want 1", len(l.Items))
	}
	return l.Items[0].Value.AsApproximateFloat64(), nil
}

// Lines prints the snapshot for a person: one line per HPA with replicas
// and each metric against its target, then the lag.
func (s Snapshot) Lines() []string {
	var names []string
	for n := range s.HPAs {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []string
	for _, n := range names {
		h := s.HPAs[n]
		parts := []string{fmt.Sprintf("%-24s replicas %d/%d (max %d)", n, h.Current, h.Desired, h.Max)}
		for _, m := range h.Metrics {
			parts = append(parts, fmt.Sprintf("%s %s/%s", m.Name, m.Current, m.Target))
		}
		out = append(out, strings.Join(parts, "  "))
	}
	lag := "lag " + Format(s.Lag)
	if s.LagErr != nil {
		lag = "lag: " + s.LagErr.Error()
	}
	out = append(out, fmt.Sprintf("%-24s %s", "kafka", lag))
	return out
}
