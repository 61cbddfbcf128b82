package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/adapter/internal/explain"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource/promtest"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// brokenRules has the seed's rule and, after it, one rule for each way a
// rule can yield nothing.
const brokenRules = `
rules:
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^(.*)_total$", as: "${1}_per_second"}
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
  # no series match
  - seriesQuery: 'flask_http_requests_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
  # the filters remove everything
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    seriesFilters: [{isNot: "^flask_.*"}]
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
  # name.matches matches nothing
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^(.*)_seconds_count$", as: "${1}_rate"}
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
  # no label maps to a resource
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources: {overrides: {kubernetes_pod_name: {resource: pod}}}
    name: {matches: "^(.*)_total$", as: "${1}_by_k8s_pod"}
    metricsQuery: 'rate(<<.Series>>{<<.LabelMatchers>>}[2m])'
  # a template that fails with a real request's values
  - seriesQuery: 'flask_http_request_total{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {matches: "^(.*)_total$", as: "${1}_first_pod"}
    metricsQuery: 'rate(<<.Series>>{pod="<<index (index .LabelValuesByName "pod") 0>>"}[2m])'
`

// TestExplainSaysWhyEachRuleYieldsNothing runs `adapter explain` against
// the real Prometheus scraping a real web server: each broken rule is
// explained with its own reason, and the good one with its mapping.
func TestExplainSaysWhyEachRuleYieldsNothing(t *testing.T) {
	addrs := promtest.StartWebServers(t, []string{"web-1"}, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
	promURL := promtest.StartPrometheus(t, addrs, "1s", promtest.Flags...)
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(rulesFile, []byte(brokenRules), 0o644); err != nil {
		t.Fatal(err)
	}
	s := settings(rulesFile, promURL)
	var out string
	testproc.Eventually(t, 30*time.Second, "the web server's series scraped", func() error {
		var b bytes.Buffer
		if err := runExplain(s, explain.Request{}, "", &b); err != nil {
			return err
		}
		out = b.String()
		if !strings.Contains(out, "flask_http_request_total → flask_http_request_per_second") {
			return errString(out)
		}
		return nil
	})
	t.Log("\n" + out)
	rules := strings.Split(out, "\nrule ")[1:]
	if len(rules) != 6 {
		t.Fatalf("%d rules explained, want 6", len(rules))
	}
	for i, want := range []string{
		"labels mapped to resources: namespace → namespaces, pod → pods",
		"YIELDS NOTHING: no series in Prometheus matches the seriesQuery flask_http_requests_total",
		"YIELDS NOTHING: seriesFilters removed every series the seriesQuery matched (flask_http_request_total)",
		`YIELDS NOTHING: name.matches "^(.*)_seconds_count$" matches none of the names it saw: flask_http_request_total`,
		"YIELDS NOTHING: no label of its series maps to a Kubernetes resource: resources.overrides map kubernetes_pod_name → pod",
		"TEMPLATE ERROR: rule config.yaml:",
	} {
		if !strings.Contains(rules[i], want) {
			t.Errorf("rule %d: explanation lacks %q:\n%s", i, want, rules[i])
		}
	}
	if !strings.Contains(rules[4], "its labels: app") && !strings.Contains(rules[4], "instance, job, method, namespace, path, pod, status") {
		t.Errorf("the unmapped rule does not list the labels it saw:\n%s", rules[4])
	}
}

// TestExplainOneRequest: the PromQL as rendered, the series per pod, the
// sum, the sample's age, and what the HPA gets; and an unknown metric
// named after the series is told the metric to use.
func TestExplainOneRequest(t *testing.T) {
	addrs := promtest.StartWebServers(t, []string{"web-1", "web-2"}, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
	promURL := promtest.StartPrometheus(t, addrs, "1s", promtest.Flags...)
	for range 5 {
		resp, err := http.Post("http://"+addrs["web-1"]+"/buy", "application/json", strings.NewReader(`{}`))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	rulesFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(rulesFile, []byte(strings.SplitN(brokenRules, "  # no series match", 2)[0]), 0o644); err != nil {
		t.Fatal(err)
	}
	s := settings(rulesFile, promURL)
	req := explain.Request{Namespace: "itest", Resource: "pods", Metric: "flask_http_request_per_second"}
	var out string
	testproc.Eventually(t, 30*time.Second, "both pods explained", func() error {
		var b bytes.Buffer
		if err := runExplain(s, req, "", &b); err != nil {
			return err
		}
		out = b.String()
		if !strings.Contains(out, `"name": "web-2"`) || !strings.Contains(out, `status="400"`) || !strings.Contains(out, `"value": "`) {
			return errString(out)
		}
		return nil
	})
	t.Log("\n" + out)
	for _, want := range []string{
		`PromQL:    rate(flask_http_request_total{namespace="itest"}[2m])`,
		`freshness: max by (pod) (timestamp(flask_http_request_total{namespace="itest"}))`,
		`{pod="web-1",`, `status="400"`, "(sum), newest raw sample", ": served",
		"the HPA gets:", `"apiVersion": "custom.metrics.k8s.io/v1beta2"`, `"name": "flask_http_request_per_second"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explanation lacks %q", want)
		}
	}

	var b bytes.Buffer
	req.Metric = "flask_http_request_total"
	if err := runExplain(s, req, "", &b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"NOT SERVED: metric flask_http_request_total is not served for pods",
		"did you mean flask_http_request_per_second?",
		"flask_http_request_total is a series that rule config.yaml:3 turns into flask_http_request_per_second",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("unknown metric: explanation lacks %q:\n%s", want, b.String())
		}
	}
}

func settings(rulesFile, promURL string) Settings {
	return Settings{ConfigFile: rulesFile, Prometheus: promsource.ClientOptions{URL: promURL, Timeout: 10 * time.Second},
		MaxSampleAge: 2 * time.Minute}
}

type errString string

func (e errString) Error() string { return string(e) }
