package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// applyStdin runs kubectl apply on a document; dryRun asks the API
// server's admission only.
func applyStdin(doc string, dryRun bool) (string, error) {
	args := []string{"--kubeconfig", kubeconfig, "apply", "-f", "-"}
	if dryRun {
		args = append(args, "--dry-run=server")
	}
	cmd := exec.Command(kubectlBin, args...)
	cmd.Stdin = strings.NewReader(doc)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func metricsRule(ns, name, spec string) string {
	return fmt.Sprintf(`apiVersion: adapter.purchase-system.dev/v1alpha1
kind: MetricsRule
metadata: {name: %s, namespace: %s}
spec:
%s`, name, ns, spec)
}

// ruleStatus is what the adapter wrote into a MetricsRule's status.
type ruleStatus struct {
	Conditions []struct{ Type, Status, Reason, Message string } `json:"conditions"`
	Metrics    []string                                         `json:"metrics"`
	Series     int                                              `json:"series"`
	LastError  string                                           `json:"lastError"`
	Conflicts  []string                                         `json:"conflicts"`
}

func (s ruleStatus) condition(typ string) string {
	for _, c := range s.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

func statusOf(ns, name string) (ruleStatus, error) {
	out, err := execKubectl("-n", ns, "get", "metricsrule", name, "-o", "jsonpath={.status}")
	if err != nil {
		return ruleStatus{}, fmt.Errorf("%v: %s", err, out)
	}
	var s ruleStatus
	if strings.TrimSpace(out) == "" {
		return s, fmt.Errorf("no status yet")
	}
	return s, json.Unmarshal([]byte(out), &s)
}

const teamSpec = `  seriesQuery: 'go_goroutines{pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^go_goroutines$", as: "team_goroutines"}
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
`

// A team adds a rule in its namespace and its HPA scales on it; admission
// refuses what a schema can check; the adapter refuses a rule that reaches
// into another namespace and one whose query does not parse, saying why in
// status; a rule that would take the operator's metric shows the clash;
// none of it changes what anyone else is served.
func TestTeamsOwnRulesInTheirNamespaces(t *testing.T) {
	deploySystem(t)
	ns := namespace(t)
	ctx := context.Background()
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, webDeployment(ns, 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Admission (the CRD's CEL rules).
	for what, c := range map[string]struct{ spec, want string }{
		"an invalid name.matches": {strings.Replace(teamSpec, `"^go_goroutines$"`, `"(go"`, 1), "name.matches is not a valid regular expression"},
		"an unknown placeholder":  {strings.Replace(teamSpec, "<<.GroupBy>>", "<<.GroupByLabel>>", 1), "a template action names a field"},
		"no metricsQuery":         {strings.Replace(teamSpec, "  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'\n", "", 1), "metricsQuery: Required"},
	} {
		out, err := applyStdin(metricsRule(ns, "refused", c.spec), true)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("admission of a rule with %s: %v %s, want refused with %q", what, err, out, c.want)
		}
	}

	for name, spec := range map[string]string{
		"goroutines": teamSpec,
		"sneaky":     strings.Replace(teamSpec, `{pod!=""}`, `{namespace="purchase-system",pod!=""}`, 1),
		"broken":     strings.Replace(teamSpec, "by (<<.GroupBy>>)", "by (", 1),
		"shadow": `  seriesQuery: 'flask_http_request_total{pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^flask_http_request_total$", as: "flask_http_request_per_second"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
`,
	} {
		if out, err := applyStdin(metricsRule(ns, name, spec), false); err != nil {
			t.Fatalf("kubectl apply MetricsRule %s: %v\n%s", name, err, out)
		}
	}

	testproc.Eventually(t, 180*time.Second, "the team's rule discovered, its status written", func() error {
		s, err := statusOf(ns, "goroutines")
		if err != nil {
			return err
		}
		if s.condition("Accepted") != "True" || s.condition("Discovered") != "True" || len(s.Metrics) != 1 || s.Metrics[0] != "team_goroutines" || s.Series < 1 {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	for name, want := range map[string]string{"sneaky": "reaches beyond namespace " + ns, "broken": "metricsQuery"} {
		testproc.Eventually(t, 60*time.Second, "MetricsRule "+name+" refused in its status", func() error {
			s, err := statusOf(ns, name)
			if err != nil {
				return err
			}
			if s.condition("Accepted") != "False" || !strings.Contains(s.LastError, want) {
				return fmt.Errorf("status %+v, want Accepted False with %q", s, want)
			}
			return nil
		})
	}
	testproc.Eventually(t, 60*time.Second, "the clash with the operator's metric in the shadowing rule's status", func() error {
		s, err := statusOf(ns, "shadow")
		if err != nil {
			return err
		}
		if s.condition("Accepted") != "True" || !strings.Contains(strings.Join(s.Conflicts, "\n"), "flask_http_request_per_second on pods is served by config.yaml:") {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})

	// Served in its namespace, and only there.
	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/%s/pods/*/team_goroutines"
	testproc.Eventually(t, 60*time.Second, "team_goroutines served in "+ns, func() error {
		list, out, err := rawJSON("get", "--raw", fmt.Sprintf(path, ns))
		if err != nil || len(list.Items) == 0 {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	if _, out, err := rawJSON("get", "--raw", fmt.Sprintf(path, "purchase-system")); err == nil || !strings.Contains(out, "NotFound") {
		t.Errorf("team_goroutines in purchase-system: %v %s, want not found (the rule is %s's)", err, out, ns)
	}
	// The operator's metric is the operator's, in the team's namespace too,
	// and everyone else's metrics answer as before.
	for _, n := range []string{ns, "purchase-system"} {
		if _, out, err := rawJSON("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/"+n+"/pods/*/flask_http_request_per_second"); err != nil {
			t.Errorf("flask_http_request_per_second in %s beside the teams' rules: %v %s", n, err, out)
		}
	}

	// The team's HPA scales on it: some ten goroutines per pod against a
	// target of 1.
	hpa := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web"},
			MinReplicas:    ptr.To(int32(1)), MaxReplicas: 2,
			Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricSource{
				Metric: autoscalingv2.MetricIdentifier{Name: "team_goroutines"},
				Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: ptr.To(resource.MustParse("1"))},
			}}},
		},
	}
	if _, err := client.AutoscalingV2().HorizontalPodAutoscalers(ns).Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testproc.Eventually(t, 120*time.Second, "the team's HPA scaling on its own metric", func() error {
		d, err := client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if *d.Spec.Replicas != 2 {
			h, _ := client.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, "web", metav1.GetOptions{})
			return fmt.Errorf("%d replicas; HPA status %+v", *d.Spec.Replicas, h.Status)
		}
		return nil
	})
}
