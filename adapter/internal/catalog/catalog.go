// Package catalog is what the rules currently yield: which custom and
// external metrics exist, on which resources, from which series and rule.
// It is rebuilt by discovery, rule by rule, and a rule whose discovery did
// not finish keeps what it found last: a Prometheus hiccup or a cancelled
// request never empties the list the HPAs read.
package catalog

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// Discoverer finds what one rule yields (the Prometheus source).
type Discoverer interface {
	DiscoverRule(ctx context.Context, r *rules.Rule) promsource.RuleDiscovery
}

// Options configure a catalog.
type Options struct {
	// Extra external metrics served from elsewhere (Kafka lag), listed
	// beside those the rules yield.
	Extra []string
	// RediscoverAfter: a request for a metric the catalog lacks triggers
	// a discovery if the catalog is at least this old (default 5 s), so a
	// series that appeared since the last relist is served at once.
	RediscoverAfter time.Duration
	// DiscoveryTimeout bounds one discovery (default 30 s).
	DiscoveryTimeout time.Duration
	// StaleAfter: a rule whose discovery fails keeps serving what it last
	// found this long after it last finished (default 10 min).
	StaleAfter time.Duration
	// Now is the clock (default time.Now).
	Now     func() time.Time
	Metrics *Metrics
	Logger  *slog.Logger
}

// Catalog is safe for concurrent use.
type Catalog struct {
	disc   Discoverer
	mapper apimeta.RESTMapper
	o      Options

	mu   sync.RWMutex
	cfg  *rules.Config
	team []*rules.Rule // teams' rules (MetricsRule objects), each scoped to its namespace
	gen  int           // changes with cfg and team: a discovery of older rules is dropped
	// conflicts are, by rule fingerprint, the metrics a team's rule yields
	// that another rule already serves in its namespace (not served).
	conflicts map[string][]string
	byRule    map[string]promsource.RuleDiscovery // by rule fingerprint: the last finished discovery of each
	health    map[string]*health                  // by rule fingerprint
	sources   map[string]bool                     // the rules' Source labels in the self-metrics
	lastErrs  []error
	loaded    bool // every rule of the current config finished a discovery once
	custom    map[string][]promsource.Metric
	external  map[string][]promsource.Metric
	cInfos    []cmprovider.CustomMetricInfo
	eInfos    []cmprovider.ExternalMetricInfo

	discoverMu    sync.Mutex
	lastDiscovery time.Time
}

// New returns a catalog of cfg's rules; nothing is discovered until
// Discover or Run.
func New(cfg *rules.Config, d Discoverer, mapper apimeta.RESTMapper, o Options) *Catalog {
	if o.RediscoverAfter == 0 {
		o.RediscoverAfter = 5 * time.Second
	}
	if o.DiscoveryTimeout == 0 {
		o.DiscoveryTimeout = 30 * time.Second
	}
	if o.StaleAfter == 0 {
		o.StaleAfter = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Catalog{disc: d, mapper: mapper, o: o, cfg: cfg, byRule: map[string]promsource.RuleDiscovery{}, health: map[string]*health{}}
	c.mu.Lock()
	c.forgetRules()
	c.mu.Unlock()
	c.rebuild()
	return c
}

// Run discovers every relist period, until ctx ends.
func (c *Catalog) Run(ctx context.Context, relist time.Duration) {
	c.Discover(ctx)
	t := time.NewTicker(relist)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Discover(ctx)
		}
	}
}

// Rules returns the rules in use.
func (c *Catalog) Rules() *rules.Config {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cfg
}

// SetConfig replaces the rules (after a reload) and discovers under the
// new ones. What an unchanged rule found is kept.
func (c *Catalog) SetConfig(ctx context.Context, cfg *rules.Config) {
	c.mu.Lock()
	c.cfg = cfg
	c.loaded = false // Ready (every rule discovered) waits for the new rules; Serving does not
	c.replaced()
	c.mu.Unlock()
	c.rebuild()
	c.Discover(ctx)
}

// SetTeamRules replaces the teams' rules (each scoped to its namespace by
// rules.Rule.ScopeTo) and discovers under them. What an unchanged rule
// found is kept.
func (c *Catalog) SetTeamRules(ctx context.Context, team []*rules.Rule) {
	c.mu.Lock()
	c.team = team
	c.replaced()
	c.mu.Unlock()
	c.rebuild()
	c.Discover(ctx)
}

// replaced keeps what unchanged rules found after the rules changed; the
// caller holds c.mu.
func (c *Catalog) replaced() {
	c.gen++
	keep := map[string]promsource.RuleDiscovery{}
	for _, r := range c.inUse() {
		if d, ok := c.byRule[r.Fingerprint]; ok {
			d.Rule = r
			keep[r.Fingerprint] = d
		}
	}
	c.byRule = keep
	c.forgetRules()
}

func allRules(cfg *rules.Config) []*rules.Rule {
	return append(append([]*rules.Rule{}, cfg.Rules...), cfg.ExternalRules...)
}

// inUse lists the operator's rules, then the teams'; the caller holds
// c.mu. The order decides: a metric the operator's rules serve is theirs
// in every namespace.
func (c *Catalog) inUse() []*rules.Rule { return append(allRules(c.cfg), c.team...) }

// operators reports whether r is one of the operator's rules (the file's).
func operators(r *rules.Rule) bool { return r.Namespace == "" }

// in reports whether a metric of rule r may serve a request in namespace
// ns: the operator's everywhere, a team's in its namespace only.
func in(r *rules.Rule, ns string) bool { return operators(r) || r.Namespace == ns }

// Discover asks Prometheus what each rule yields now. It runs on a context
// of its own (bounded by DiscoveryTimeout): ctx ending stops the wait, not
// the discovery.
func (c *Catalog) Discover(ctx context.Context) {
	c.discoverMu.Lock()
	defer c.discoverMu.Unlock()
	c.discover(ctx)
}

func (c *Catalog) discover(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.DiscoveryTimeout)
	defer cancel()
	c.mu.RLock()
	gen, list := c.gen, c.inUse()
	c.mu.RUnlock()
	start := time.Now()
	var errs []error
	found := map[string]promsource.RuleDiscovery{}
	var results []promsource.RuleDiscovery
	for _, r := range list {
		d := c.disc.DiscoverRule(dctx, r)
		d.Rule = r
		results = append(results, d)
		if d.Err != nil {
			errs = append(errs, d.Err)
			continue
		}
		found[r.Fingerprint] = d
	}
	c.mu.Lock()
	if c.gen != gen {
		c.mu.Unlock()
		return // the rules changed meanwhile: a discovery under the new ones follows
	}
	now := c.o.Now()
	for _, d := range results {
		c.recordDiscovery(d.Rule, d, now)
	}
	for k, d := range found {
		c.byRule[k] = d
	}
	c.lastErrs = errs
	if len(errs) == 0 {
		c.loaded = true
	}
	c.mu.Unlock()
	c.lastDiscovery = time.Now()
	c.o.Metrics.discoveries.WithLabelValues(result(errs)).Inc()
	c.o.Metrics.discoverySeconds.Observe(time.Since(start).Seconds())
	for _, err := range errs {
		c.o.Logger.Error("metric discovery failed for a rule; what it found before is kept", "err", err)
	}
	c.rebuild()
}

func result(errs []error) string {
	if len(errs) > 0 {
		return "partial"
	}
	return "complete"
}

// rebuild derives the metric lists from the rules' discoveries, in rule
// order: a metric two rules yield for one resource is served by the first.
// A team's rule never takes a metric another rule serves in its namespace
// (the operator's, which serve every namespace, or an earlier team rule of
// the namespace): the clash is kept for its status.
func (c *Catalog) rebuild() {
	c.mu.Lock()
	defer c.mu.Unlock()
	custom := map[string][]promsource.Metric{}
	external := map[string][]promsource.Metric{}
	conflicts := map[string][]string{}
	now := c.o.Now()
	for _, r := range c.inUse() {
		d, ok := c.byRule[r.Fingerprint]
		if !ok || c.health[r.Fingerprint].expired(now, c.o.StaleAfter) {
			continue
		}
		for _, m := range d.Metrics {
			m.Rule = r
			if r.External {
				if prev := firstIn(external[m.Name], r.Namespace); prev != nil && !operators(r) {
					conflicts[r.Fingerprint] = append(conflicts[r.Fingerprint], fmt.Sprintf("external metric %s is served by %s", m.Name, prev.Source))
					continue
				}
				external[m.Name] = append(external[m.Name], m)
				continue
			}
			if !operators(r) {
				var free []schema.GroupResource
				for _, gr := range m.Resources {
					if prev := servingIn(custom[m.Name], r.Namespace, gr); prev != nil {
						conflicts[r.Fingerprint] = append(conflicts[r.Fingerprint], fmt.Sprintf("metric %s on %s is served by %s", m.Name, gr, prev.Source))
						continue
					}
					free = append(free, gr)
				}
				if len(free) == 0 {
					continue
				}
				m.Resources = free
			}
			custom[m.Name] = append(custom[m.Name], m)
		}
	}
	var cInfos []cmprovider.CustomMetricInfo
	seen := map[cmprovider.CustomMetricInfo]bool{}
	for name, ms := range custom {
		for _, m := range ms {
			for _, gr := range m.Resources {
				gr, namespaced := c.normalize(gr)
				info := cmprovider.CustomMetricInfo{GroupResource: gr, Namespaced: namespaced, Metric: name}
				if !seen[info] {
					seen[info] = true
					cInfos = append(cInfos, info)
				}
			}
		}
	}
	sort.Slice(cInfos, func(i, j int) bool { return cInfos[i].String() < cInfos[j].String() })
	var eInfos []cmprovider.ExternalMetricInfo
	for name := range external {
		eInfos = append(eInfos, cmprovider.ExternalMetricInfo{Metric: name})
	}
	for _, name := range c.o.Extra {
		eInfos = append(eInfos, cmprovider.ExternalMetricInfo{Metric: name})
	}
	sort.Slice(eInfos, func(i, j int) bool { return eInfos[i].Metric < eInfos[j].Metric })
	c.custom, c.external, c.cInfos, c.eInfos, c.conflicts = custom, external, cInfos, eInfos, conflicts
	c.o.Metrics.discovered.WithLabelValues("custom").Set(float64(len(cInfos)))
	c.o.Metrics.discovered.WithLabelValues("external").Set(float64(len(eInfos)))
}

// firstIn is the rule of the first metric that serves namespace ns.
func firstIn(ms []promsource.Metric, ns string) *rules.Rule {
	for _, m := range ms {
		if in(m.Rule, ns) {
			return m.Rule
		}
	}
	return nil
}

// servingIn is the rule of the first metric serving gr in namespace ns.
func servingIn(ms []promsource.Metric, ns string, gr schema.GroupResource) *rules.Rule {
	for _, m := range ms {
		if in(m.Rule, ns) && slices.Contains(m.Resources, gr) {
			return m.Rule
		}
	}
	return nil
}

// normalize says whether a served resource (discovery resolved the
// rule's through the REST mapper) is namespaced.
func (c *Catalog) normalize(gr schema.GroupResource) (schema.GroupResource, bool) {
	if gr.Group == "" && gr.Resource == "namespaces" {
		return gr, false
	}
	if c.mapper != nil {
		if gvk, err := c.mapper.KindFor(gr.WithVersion("")); err == nil {
			if m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err == nil {
				return gr, m.Scope.Name() == apimeta.RESTScopeNameNamespace
			}
		}
	}
	return gr, true
}

// ListCustom lists the custom metrics the rules yield now.
func (c *Catalog) ListCustom() []cmprovider.CustomMetricInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cInfos
}

// ListExternal lists the external metrics.
func (c *Catalog) ListExternal() []cmprovider.ExternalMetricInfo {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.eInfos
}

// Ready reports whether every rule finished a discovery once.
func (c *Catalog) Ready() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.loaded {
		return nil
	}
	if len(c.lastErrs) > 0 {
		return fmt.Errorf("metric discovery has not finished for every rule: %v", c.lastErrs[0])
	}
	return fmt.Errorf("metric discovery has not run yet")
}

// Serving reports whether the catalog has metrics from Prometheus to
// serve: some rule of the current config was discovered, in this round or
// an earlier one (a reload keeps what unchanged rules found, a failed round
// keeps what the last one found). Unlike Ready, a rule that keeps failing
// or a reload during a Prometheus outage does not make it fail.
func (c *Catalog) Serving() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, r := range allRules(c.cfg) {
		if _, ok := c.byRule[r.Fingerprint]; ok {
			return nil
		}
	}
	if len(allRules(c.cfg)) == 0 {
		return fmt.Errorf("the configuration has no Prometheus rule")
	}
	if len(c.lastErrs) > 0 {
		return fmt.Errorf("no rule discovered yet: %v", c.lastErrs[0])
	}
	return fmt.Errorf("metric discovery has not run yet")
}

// Reachable reports whether the last discovery round reached Prometheus
// (at least one rule answered).
func (c *Catalog) Reachable() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if n := len(c.inUse()); n > 0 && len(c.lastErrs) >= n {
		return c.lastErrs[0]
	}
	return nil
}

// Discoveries returns the last finished discovery of each rule in use, in
// rule order (rules never discovered have Err set), for explaining.
func (c *Catalog) Discoveries() []promsource.RuleDiscovery {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []promsource.RuleDiscovery
	for _, r := range c.inUse() {
		d, ok := c.byRule[r.Fingerprint]
		if !ok {
			d = promsource.RuleDiscovery{Rule: r, Err: fmt.Errorf("not discovered yet")}
			for _, err := range c.lastErrs {
				if strings.Contains(err.Error(), "rule "+r.Source+" ") {
					d.Err = err
				}
			}
		}
		out = append(out, d)
	}
	return out
}

// Custom finds the metric serving name on gr (as a request names it:
// "ingresses.networking.k8s.io", or "ingress", resolved as the rules'
// resources are).
//
// A team's rule serves requests in its namespace (ns) only.
func (c *Catalog) Custom(ns, name string, gr schema.GroupResource) (promsource.Metric, bool) {
	// The API server names the resource as it serves it (pods,
	// ingresses.networking.k8s.io): the exact match answers every HPA
	// request; only another spelling goes through the mapper.
	if m, ok := c.custom1(ns, name, gr); ok || c.mapper == nil {
		return m, ok
	}
	gvr, err := c.mapper.ResourceFor(gr.WithVersion(""))
	if err != nil || gvr.GroupResource() == gr {
		return promsource.Metric{}, false
	}
	return c.custom1(ns, name, gvr.GroupResource())
}

func (c *Catalog) custom1(ns, name string, gr schema.GroupResource) (promsource.Metric, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, m := range c.custom[name] {
		if in(m.Rule, ns) && slices.Contains(m.Resources, gr) {
			return m, true
		}
	}
	return promsource.Metric{}, false
}

// External finds the external metric a rule yields under name for a
// request in namespace ns.
func (c *Catalog) External(ns, name string) (promsource.Metric, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, m := range c.external[name] {
		if in(m.Rule, ns) {
			return m, true
		}
	}
	return promsource.Metric{}, false
}

// Refresh runs a discovery for a request that named a metric the catalog
// lacks — a series that appeared since the last relist should not wait
// for the next one — unless the catalog is younger than RediscoverAfter.
// The discovery goes on if ctx ends; the caller stops waiting.
func (c *Catalog) Refresh(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.discoverMu.Lock()
		defer c.discoverMu.Unlock()
		if time.Since(c.lastDiscovery) < c.o.RediscoverAfter {
			return
		}
		c.discover(context.WithoutCancel(ctx))
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// RequireCustom is Custom for a request: on a miss it refreshes once
// (rate-limited), then answers with an error naming what exists.
func (c *Catalog) RequireCustom(ctx context.Context, ns, name string, gr schema.GroupResource) (promsource.Metric, error) {
	if m, ok := c.Custom(ns, name, gr); ok {
		return m, nil
	}
	c.Refresh(ctx)
	if m, ok := c.Custom(ns, name, gr); ok {
		return m, nil
	}
	return promsource.Metric{}, c.NotServed(ns, name, gr)
}

// NotServed explains a missing custom metric: which metrics exist for the
// resource, the nearest names, and whether the name is a series a rule
// renames.
func (c *Catalog) NotServed(ns, name string, gr schema.GroupResource) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var avail []string
	for _, info := range c.cInfos {
		if rules.SameResource(info.GroupResource, gr) {
			avail = append(avail, info.Metric)
		}
	}
	msg := fmt.Sprintf("metric %s is not served for %s", name, gr)
	for n, ms := range c.custom {
		for _, m := range ms {
			if m.Series == name && n != name {
				msg += fmt.Sprintf("; %s is a Prometheus series that rule %s serves as %s", name, m.Rule.Source, n)
			}
		}
	}
	if len(avail) > 0 {
		if near := Nearest(name, avail, 3); len(near) > 0 && near[0] != name {
			msg += "; did you mean " + strings.Join(near, " or ") + "?"
		}
		msg += "; metrics for " + gr.String() + ": " + strings.Join(avail, ", ")
	} else {
		msg += "; no metrics are served for " + gr.String()
	}
	if err := c.failingRuleFor(ns, name, false); err != nil {
		return err
	}
	if len(c.lastErrs) > 0 {
		msg += " (last discovery did not finish: " + c.lastErrs[0].Error() + ")"
	}
	return &NotFoundError{msg}
}

// NotServedExternal explains a missing external metric.
func (c *Catalog) NotServedExternal(ns, name string) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var names []string
	for _, e := range c.eInfos {
		names = append(names, e.Metric)
	}
	msg := fmt.Sprintf("external metric %s is not served", name)
	if near := Nearest(name, names, 3); len(near) > 0 {
		msg += "; did you mean " + strings.Join(near, " or ") + "?"
	}
	msg += "; external metrics: " + strings.Join(names, ", ")
	if err := c.failingRuleFor(ns, name, true); err != nil {
		return err
	}
	return &NotFoundError{msg}
}

// NotFoundError is a metric the catalog does not serve.
type NotFoundError struct{ Msg string }

func (e *NotFoundError) Error() string { return e.Msg }
