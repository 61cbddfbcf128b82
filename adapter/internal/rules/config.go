// Package rules reads metric rules in prometheus-adapter's configuration
// format and turns them into PromQL: which Prometheus series become which
// Kubernetes metrics, on which resources, by which query.
//
// Supported: rules and externalRules with seriesQuery, seriesFilters
// (is/isNot), resources (overrides, template, namespaced), name (matches,
// as) and metricsQuery with <<.Series>>, <<.LabelMatchers>>, <<.GroupBy>>,
// <<.GroupBySlice>> and <<.LabelValuesByName>>. resourceRules are ignored
// with a warning: metrics.k8s.io is metrics-server's job.
package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/upstream"
)

// Config is a parsed rules file.
type Config struct {
	Rules         []*Rule // custom metrics (custom.metrics.k8s.io)
	ExternalRules []*Rule // external metrics (external.metrics.k8s.io)
	// KafkaLag says who may read which consumer groups' lag (this
	// project's addition to the format).
	KafkaLag LagAccess
	// Upstreams are the metrics providers the adapter fronts (this
	// project's addition: one APIService, KEDA's metrics behind it).
	Upstreams []upstream.Spec
	// Warnings are parts of the file that are valid but not acted on.
	Warnings []string
}

// Rule is one rule of either kind.
type Rule struct {
	// Source is "file:line" of the rule, for messages (a team's rule:
	// "MetricsRule namespace/name").
	Source string
	// Namespace is set for a team's rule (ScopeTo): it serves requests in
	// that namespace only, and reads that namespace's series only.
	Namespace    string
	External     bool
	SeriesQuery  string
	filters      []filter
	overrides    map[string]schema.GroupResource // label -> resource
	template     *template.Template              // resource -> label, when set
	templateText string
	// templateRE finds the group and resource in a label name, shortest
	// group first and longest group first: kube_<<.Group>>_<<.Resource>>
	// reads kube_networking_k8s_io_ingress both ways, and the one that
	// resolves wins.
	templateRE []*regexp.Regexp
	namespaced bool
	matches    *regexp.Regexp
	as         string
	query      *template.Template
	QueryText  string
	// Fingerprint is the same for the same rule text, wherever it stands
	// in the file: what the adapter found for a rule survives a reload
	// that did not change it.
	Fingerprint string
}

type filter struct {
	re *regexp.Regexp
	is bool
}

// The file format, for decoding.
type fileSpec struct {
	Rules         []ruleSpec `yaml:"rules"`
	ExternalRules []ruleSpec `yaml:"externalRules"`
	ResourceRules yaml.Node  `yaml:"resourceRules"`
	KafkaLag      *struct {
		Access []LagGrant `yaml:"access"`
	} `yaml:"kafkaLag"`
	Upstreams []upstream.Spec `yaml:"upstreams"`
}

type ruleSpec struct {
	SeriesQuery   string       `yaml:"seriesQuery"`
	SeriesFilters []filterSpec `yaml:"seriesFilters"`
	Resources     struct {
		Overrides  map[string]groupResourceSpec `yaml:"overrides"`
		Template   string                       `yaml:"template"`
		Namespaced *bool                        `yaml:"namespaced"`
	} `yaml:"resources"`
	Name struct {
		Matches string `yaml:"matches"`
		As      string `yaml:"as"`
	} `yaml:"name"`
	MetricsQuery string `yaml:"metricsQuery"`
}

type filterSpec struct {
	Is    string `yaml:"is"`
	IsNot string `yaml:"isNot"`
}

type groupResourceSpec struct {
	Group    string `yaml:"group"`
	Resource string `yaml:"resource"`
}

// Parse reads a rules file. name is used in messages ("config.yaml:12:").
// Every error names the line and what is wrong.
func Parse(name string, data []byte) (*Config, error) {
	var spec fileSpec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&spec); err != nil {
		if errors.Is(err, io.EOF) {
			return &Config{KafkaLag: DefaultLagAccess}, nil
		}
		return nil, fmt.Errorf("%s: %s", name, yamlError(err))
	}
	// Decode again as nodes, for the line of each rule and field.
	var nodes struct {
		Rules         []yaml.Node `yaml:"rules"`
		ExternalRules []yaml.Node `yaml:"externalRules"`
	}
	if err := yaml.Unmarshal(data, &nodes); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	cfg := &Config{KafkaLag: DefaultLagAccess}
	if spec.KafkaLag != nil {
		cfg.KafkaLag = LagAccess{Grants: spec.KafkaLag.Access}
		for i, g := range cfg.KafkaLag.Grants {
			if g.Namespace == "" || len(g.ConsumerGroups) == 0 {
				return nil, fmt.Errorf("%s: kafkaLag.access[%d]: needs a namespace and at least one of consumerGroups (\"*\" for any)", name, i)
			}
			if _, err := lag.ParsePartitionSet(g.PartitionLimitation); err != nil {
				return nil, fmt.Errorf("%s: kafkaLag.access[%d]: %w", name, i, err)
			}
		}
	}
	names := map[string]bool{}
	for i, u := range spec.Upstreams {
		if err := u.Validate(fmt.Sprintf("%s: upstreams[%d]", name, i)); err != nil {
			return nil, err
		}
		if names[u.Name] {
			return nil, fmt.Errorf("%s: upstreams[%d]: a second upstream named %s", name, i, u.Name)
		}
		names[u.Name] = true
		cfg.Upstreams = append(cfg.Upstreams, u)
	}
	if !spec.ResourceRules.IsZero() {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s:%d: resourceRules ignored: CPU and memory (metrics.k8s.io) are served by metrics-server", name, spec.ResourceRules.Line))
	}
	for i, rs := range spec.Rules {
		r, err := compile(name, "rules", i, &nodes.Rules[i], rs, false)
		if err != nil {
			return nil, err
		}
		cfg.Rules = append(cfg.Rules, r)
	}
	for i, rs := range spec.ExternalRules {
		r, err := compile(name, "externalRules", i, &nodes.ExternalRules[i], rs, true)
		if err != nil {
			return nil, err
		}
		cfg.ExternalRules = append(cfg.ExternalRules, r)
	}
	return cfg, nil
}

// ParseUpstreams reads a file that holds an upstreams section and nothing
// else (the adapter's --upstreams-file): a kustomize component or a
// second ConfigMap names upstreams without rewriting the rules file.
func ParseUpstreams(name string, data []byte) ([]upstream.Spec, error) {
	var spec struct {
		Upstreams []upstream.Spec `yaml:"upstreams"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&spec); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %s (this file holds upstreams only; rules belong in --config)", name, yamlError(err))
	}
	for i, u := range spec.Upstreams {
		if err := u.Validate(fmt.Sprintf("%s: upstreams[%d]", name, i)); err != nil {
			return nil, err
		}
	}
	return spec.Upstreams, nil
}

// MergeUpstreams is the config file's upstreams followed by another
// file's; a name both use is refused, naming both files.
func MergeUpstreams(configName string, config []upstream.Spec, otherName string, other []upstream.Spec) ([]upstream.Spec, error) {
	all := slices.Clone(config)
	for _, u := range other {
		switch i := slices.IndexFunc(all, func(c upstream.Spec) bool { return c.Name == u.Name }); {
		case i < 0:
			all = append(all, u)
		case i < len(config):
			return nil, fmt.Errorf("an upstream named %s is in both %s and %s", u.Name, configName, otherName)
		default:
			return nil, fmt.Errorf("%s: a second upstream named %s", otherName, u.Name)
		}
	}
	return all, nil
}

// lineOf finds the line of the value at path under a mapping node.
func lineOf(n *yaml.Node, path ...string) int {
	line := n.Line
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			return line
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				n, line, found = n.Content[i+1], n.Content[i].Line, true
				break
			}
		}
		if !found {
			return line
		}
	}
	return line
}

func compile(file, section string, i int, node *yaml.Node, rs ruleSpec, external bool) (*Rule, error) {
	fail := func(reason string, path ...string) error {
		field := section + "[" + fmt.Sprint(i) + "]"
		if len(path) > 0 {
			field += "." + strings.Join(path, ".")
		}
		return fmt.Errorf("%s:%d: %s: %s", file, lineOf(node, path...), field, reason)
	}
	r := &Rule{
		Fingerprint: fmt.Sprintf("%t %#v", external, rs),
		Source:      fmt.Sprintf("%s:%d", file, node.Line),
		External:    external,
		SeriesQuery: strings.TrimSpace(rs.SeriesQuery),
		QueryText:   strings.TrimSpace(rs.MetricsQuery),
		overrides:   map[string]schema.GroupResource{},
		namespaced:  true,
	}
	if r.SeriesQuery == "" {
		return nil, fail("seriesQuery is required (for example 'http_requests_total{namespace!=\"\",pod!=\"\"}')", "seriesQuery")
	}
	if _, err := ParseSeriesQuery(r.SeriesQuery); err != nil {
		return nil, fail(err.Error(), "seriesQuery")
	}
	for j, f := range rs.SeriesFilters {
		path := []string{"seriesFilters"}
		if (f.Is == "") == (f.IsNot == "") {
			return nil, fail(fmt.Sprintf("filter %d must set exactly one of is and isNot", j), path...)
		}
		expr := f.Is + f.IsNot
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, fail(fmt.Sprintf("filter %d: %v", j, err), path...)
		}
		r.filters = append(r.filters, filter{re: re, is: f.Is != ""})
	}
	for label, gr := range rs.Resources.Overrides {
		if gr.Resource == "" {
			return nil, fail(fmt.Sprintf("override for label %q has no resource", label), "resources", "overrides", label)
		}
		r.overrides[label] = schema.GroupResource{Group: gr.Group, Resource: gr.Resource}
	}
	if t := rs.Resources.Template; t != "" {
		tmpl, err := template.New("resources").Delims("<<", ">>").Option("missingkey=error").Parse(t)
		if err != nil {
			return nil, fail(err.Error(), "resources", "template")
		}
		r.template, r.templateText = tmpl, t
		for _, groupRE := range []string{"(?P<group>.*?)", "(?P<group>.*)"} {
			re, err := templateRegexp(t, groupRE)
			if err != nil {
				return nil, fail(err.Error(), "resources", "template")
			}
			r.templateRE = append(r.templateRE, re)
		}
	}
	if rs.Resources.Namespaced != nil {
		if !external {
			return nil, fail("namespaced applies to externalRules only", "resources", "namespaced")
		}
		r.namespaced = *rs.Resources.Namespaced
	}
	if !external && len(r.overrides) == 0 && r.template == nil {
		return nil, fail("resources needs overrides or a template: which label names the pod, the namespace, ...", "resources")
	}
	matches := rs.Name.Matches
	if matches == "" {
		matches = ".*"
	}
	re, err := regexp.Compile(matches)
	if err != nil {
		return nil, fail(err.Error(), "name", "matches")
	}
	r.matches = re
	r.as = rs.Name.As
	if r.as == "" {
		switch re.NumSubexp() {
		case 0:
			r.as = "$0"
		case 1:
			r.as = "$1"
		default:
			return nil, fail("name.as is required when matches has more than one capture group", "name", "as")
		}
	}
	if r.QueryText == "" {
		return nil, fail("metricsQuery is required (for example 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)')", "metricsQuery")
	}
	q, err := template.New("metricsQuery").Delims("<<", ">>").Option("missingkey=error").Parse(r.QueryText)
	if err != nil {
		return nil, fail(err.Error(), "metricsQuery")
	}
	r.query = q
	// Render once with sample values so an unknown field (<<.Foo>>) fails
	// now, not on the first HPA request.
	if _, err := r.Render(QueryParts{Series: "s", LabelMatchers: `namespace="n"`, GroupBy: "pod", GroupBySlice: []string{"pod"}, LabelValuesByName: map[string]string{"pod": "p"}}); err != nil {
		return nil, fail(err.Error(), "metricsQuery")
	}
	return r, nil
}

// templateRegexp turns a resources template such as kube_<<.Group>>_<<.Resource>>
// into a regexp that finds the group and resource in a label name.
func templateRegexp(t, groupRE string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	rest := t
	for rest != "" {
		i := strings.Index(rest, "<<")
		if i < 0 {
			b.WriteString(regexp.QuoteMeta(rest))
			break
		}
		b.WriteString(regexp.QuoteMeta(rest[:i]))
		j := strings.Index(rest[i:], ">>")
		if j < 0 {
			return nil, errors.New("unclosed <<")
		}
		switch strings.TrimSpace(rest[i+2 : i+j]) {
		case ".Group":
			b.WriteString(groupRE)
		case ".Resource":
			b.WriteString("(?P<resource>.+?)")
		default:
			return nil, fmt.Errorf("template may use only <<.Group>> and <<.Resource>>, not %s", rest[i:i+j+2])
		}
		rest = rest[i+j+2:]
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// yamlError makes yaml.v3's messages read as "line 4: field x not found".
func yamlError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, len(te.Errors))
		for i, m := range te.Errors {
			if j := strings.Index(m, " in type "); j >= 0 {
				m = m[:j]
			}
			msgs[i] = m
		}
		return strings.Join(msgs, "; ")
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}
