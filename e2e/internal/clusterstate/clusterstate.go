// Package clusterstate says, in a few lines, what state a cluster is in:
// the node's conditions, the pods that are not running and ready, and the
// latest warning events. The end-to-end tests log it when they fail, so a
// CI log that shows only its tail still says whether the node was under
// pressure, pods were evicted or a component was down.
package clusterstate

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// How many of the pods not ready and of the latest warning events
// Describe lists (an eviction storm leaves dozens of pods behind).
const (
	Pods   = 20
	Events = 15
)

// LogOnFailure logs Describe at the end of t if t failed. Call it first
// thing: cleanups run last registered first, so this one runs last and the
// state is the tail of the log.
func LogOnFailure(t testing.TB, c kubernetes.Interface) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(Describe(context.Background(), c))
		}
	})
}

// Describe answers within 20 s; what it cannot read it says it could not.
func Describe(ctx context.Context, c kubernetes.Interface) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var b strings.Builder
	b.WriteString("cluster state:\n")

	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(&b, "  nodes: %v\n", err)
	} else {
		for _, n := range nodes.Items {
			var conds []string
			for _, cond := range n.Status.Conditions {
				conds = append(conds, fmt.Sprintf("%s=%s", cond.Type, cond.Status))
			}
			var taints []string
			for _, t := range n.Spec.Taints {
				taints = append(taints, t.Key+":"+string(t.Effect))
			}
			fmt.Fprintf(&b, "  node %s: %s; taints [%s]\n", n.Name, strings.Join(conds, " "), strings.Join(taints, " "))
		}
	}

	pods, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(&b, "  pods: %v\n", err)
	} else {
		notReady := 0
		for _, p := range pods.Items {
			if ready(p) {
				continue
			}
			if notReady++; notReady > Pods {
				continue
			}
			fmt.Fprintf(&b, "  pod %s/%s: %s %s %s\n", p.Namespace, p.Name, p.Status.Phase, p.Status.Reason, p.Status.Message)
		}
		fmt.Fprintf(&b, "  %d pods, %d not running and ready\n", len(pods.Items), notReady)
	}

	events, err := c.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
	if err != nil {
		fmt.Fprintf(&b, "  events: %v\n", err)
		return b.String()
	}
	evs := events.Items
	sort.Slice(evs, func(i, j int) bool { return last(evs[i]).Before(last(evs[j])) })
	if len(evs) > Events {
		evs = evs[len(evs)-Events:]
	}
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %s %s/%s ×%d: %s\n", last(e).Format(time.TimeOnly), e.Reason, e.InvolvedObject.Kind, e.InvolvedObject.Name, max(e.Count, 1), e.Message)
	}
	return b.String()
}

func ready(p corev1.Pod) bool {
	if p.Status.Phase == corev1.PodSucceeded {
		return true
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// last is when an event was last seen: newer events carry EventTime or a
// series, older ones LastTimestamp.
func last(e corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}
