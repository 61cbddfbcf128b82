// Package teamrules serves the rules teams own in their namespaces:
// MetricsRule objects (adapter.purchase-system.dev/v1alpha1, the same
// fields as a rule of prometheus-adapter's file). It watches them,
// compiles each into a rule scoped to its namespace (rules.Rule.ScopeTo),
// hands the accepted ones to the catalog beside the operator's file, and
// writes each object's status: accepted or why not, what its discovery
// found, its last error, and the metrics another rule already serves in
// its namespace.
package teamrules

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// GVR is the MetricsRule resource.
var GVR = schema.GroupVersionResource{Group: "adapter.purchase-system.dev", Version: "v1alpha1", Resource: "metricsrules"}

// Catalog is where accepted rules go and their health comes from.
type Catalog interface {
	SetTeamRules(ctx context.Context, rs []*rules.Rule)
	Health() []catalog.RuleHealth
}

// Controller watches MetricsRules. Run it once.
type Controller struct {
	client    dynamic.Interface
	discovery discovery.DiscoveryInterface
	catalog   Catalog
	logger    *slog.Logger
	// StatusEvery is how often statuses are brought up to date with what
	// discovery found (default 15 s).
	StatusEvery time.Duration

	changed chan struct{}
	mu      sync.Mutex
	store   cache.Store
	results map[string]result // by namespace/name
}

type result struct {
	rule *rules.Rule // nil: refused
	err  error
	gen  int64
}

// New returns a controller.
func New(client dynamic.Interface, disc discovery.DiscoveryInterface, cat Catalog, logger *slog.Logger) *Controller {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Controller{client: client, discovery: disc, catalog: cat, logger: logger, StatusEvery: 15 * time.Second,
		changed: make(chan struct{}, 1), results: map[string]result{}}
}

// Run waits for the MetricsRule resource to exist (the CRD is optional),
// then watches it until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	for !c.installed() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Minute):
		}
	}
	c.logger.Info("watching MetricsRules: teams' rules in their namespaces", "resource", GVR.String())
	inf := dynamicinformer.NewFilteredDynamicInformer(c.client, GVR, metav1.NamespaceAll, 10*time.Minute, cache.Indexers{}, nil).Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.poke() },
		UpdateFunc: func(_, _ any) { c.poke() },
		DeleteFunc: func(any) { c.poke() },
	})
	c.mu.Lock()
	c.store = inf.GetStore()
	c.mu.Unlock()
	go inf.Run(ctx.Done())
	cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
	tick := time.NewTicker(c.StatusEvery)
	defer tick.Stop()
	c.poke()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
			// Edits come in bursts (kubectl apply of several): one
			// rebuild for the burst.
			time.Sleep(500 * time.Millisecond)
			c.Sync(ctx)
		case <-tick.C:
			c.WriteStatuses(ctx)
		}
	}
}

func (c *Controller) installed() bool {
	list, err := c.discovery.ServerResourcesForGroupVersion(GVR.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == GVR.Resource {
			return true
		}
	}
	return false
}

func (c *Controller) poke() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

func (c *Controller) objects() []*unstructured.Unstructured {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store == nil {
		return nil
	}
	var out []*unstructured.Unstructured
	for _, o := range c.store.List() {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u)
		}
	}
	// Rule order decides between two rules of a namespace that yield one
	// metric: the older object's.
	sort.Slice(out, func(i, j int) bool {
		ti, tj := out[i].GetCreationTimestamp(), out[j].GetCreationTimestamp()
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return key(out[i]) < key(out[j])
	})
	return out
}

func key(o *unstructured.Unstructured) string { return o.GetNamespace() + "/" + o.GetName() }

// Source is how messages and self-metrics name a team's rule.
func Source(namespace, name string) string { return "MetricsRule " + namespace + "/" + name }

// Compile turns a MetricsRule's spec into a rule of its namespace, or
// says why it cannot be one.
func Compile(o *unstructured.Unstructured) (*rules.Rule, error) {
	spec, _, _ := unstructured.NestedMap(o.Object, "spec")
	external, _, _ := unstructured.NestedBool(o.Object, "spec", "external")
	delete(spec, "external")
	section := "rules"
	if external {
		section = "externalRules"
	}
	data, err := yaml.Marshal(map[string]any{section: []any{spec}})
	if err != nil {
		return nil, err
	}
	src := Source(o.GetNamespace(), o.GetName())
	cfg, err := rules.Parse(src, data)
	if err != nil {
		return nil, err
	}
	r := append(cfg.Rules, cfg.ExternalRules...)[0]
	r.Source = src
	if err := r.ScopeTo(o.GetNamespace()); err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	return r, nil
}

// Sync compiles every MetricsRule, gives the catalog the accepted ones,
// and writes the statuses.
func (c *Controller) Sync(ctx context.Context) {
	objs := c.objects()
	results := map[string]result{}
	var accepted []*rules.Rule
	for _, o := range objs {
		r, err := Compile(o)
		results[key(o)] = result{rule: r, err: err, gen: o.GetGeneration()}
		if err != nil {
			c.logger.Warn("MetricsRule refused", "rule", key(o), "err", err)
			continue
		}
		accepted = append(accepted, r)
	}
	c.mu.Lock()
	c.results = results
	c.mu.Unlock()
	c.catalog.SetTeamRules(ctx, accepted)
	c.WriteStatuses(ctx)
}

// Status is what the adapter writes into a MetricsRule's status.
type Status struct {
	ObservedGeneration int64              `json:"observedGeneration"`
	Conditions         []metav1.Condition `json:"conditions"`
	Metrics            []string           `json:"metrics,omitempty"`
	Series             int                `json:"series"`
	LastDiscoveryTime  *metav1.Time       `json:"lastDiscoveryTime,omitempty"`
	LastError          string             `json:"lastError,omitempty"`
	Conflicts          []string           `json:"conflicts,omitempty"`
}

// StatusOf is a rule's status from its compile result and health.
func StatusOf(gen int64, compileErr error, h *catalog.RuleHealth) Status {
	s := Status{ObservedGeneration: gen}
	cond := func(typ string, st metav1.ConditionStatus, reason, msg string) {
		s.Conditions = append(s.Conditions, metav1.Condition{Type: typ, Status: st, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	if compileErr != nil {
		cond("Accepted", metav1.ConditionFalse, "Invalid", compileErr.Error())
		cond("Discovered", metav1.ConditionUnknown, "NotAccepted", "the rule is not in use")
		s.LastError = compileErr.Error()
		return s
	}
	cond("Accepted", metav1.ConditionTrue, "Accepted", "in use, scoped to this namespace")
	switch {
	case h == nil || (h.LastSuccess.IsZero() && h.LastErr == nil):
		cond("Discovered", metav1.ConditionUnknown, "Pending", "no discovery has finished yet")
	case h.LastErr != nil && h.Expired:
		cond("Discovered", metav1.ConditionFalse, "DiscoveryFailing", "discovery fails, past --rule-stale-after: its metrics answer 503 with its error")
	case h.LastErr != nil:
		cond("Discovered", metav1.ConditionFalse, "DiscoveryFailing", "discovery fails: what it found last is served until --rule-stale-after")
	default:
		cond("Discovered", metav1.ConditionTrue, "Discovered", fmt.Sprintf("%d metrics from %d series", h.Metrics, h.Series))
	}
	if h != nil {
		s.Metrics, s.Series, s.Conflicts = h.MetricNames, h.Series, h.Conflicts
		if !h.LastSuccess.IsZero() {
			t := metav1.NewTime(h.LastSuccess.Truncate(time.Second))
			s.LastDiscoveryTime = &t
		}
		if h.LastErr != nil {
			s.LastError = h.LastErr.Error()
		}
	}
	return s
}

// WriteStatuses brings every MetricsRule's status up to date; an
// unchanged status is not written.
func (c *Controller) WriteStatuses(ctx context.Context) {
	health := map[string]*catalog.RuleHealth{}
	hs := c.catalog.Health()
	for i := range hs {
		health[hs[i].Rule.Source] = &hs[i]
	}
	c.mu.Lock()
	results := c.results
	c.mu.Unlock()
	for _, o := range c.objects() {
		res, ok := results[key(o)]
		if !ok {
			continue // new since the last sync: the next one writes it
		}
		want := StatusOf(res.gen, res.err, health[Source(o.GetNamespace(), o.GetName())])
		if err := c.writeStatus(ctx, o, want); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			c.logger.Warn("writing a MetricsRule's status", "rule", key(o), "err", err)
		}
	}
}

func (c *Controller) writeStatus(ctx context.Context, o *unstructured.Unstructured, want Status) error {
	var have Status
	if raw, ok, _ := unstructured.NestedFieldNoCopy(o.Object, "status"); ok {
		b, _ := json.Marshal(raw)
		_ = json.Unmarshal(b, &have)
	}
	// A condition keeps its transition time while its status stands.
	for i := range want.Conditions {
		want.Conditions[i].LastTransitionTime = metav1.NewTime(time.Now().Truncate(time.Second))
		for _, h := range have.Conditions {
			if h.Type == want.Conditions[i].Type && h.Status == want.Conditions[i].Status {
				want.Conditions[i].LastTransitionTime = h.LastTransitionTime
			}
		}
	}
	if reflect.DeepEqual(normalized(have), normalized(want)) {
		return nil
	}
	b, err := json.Marshal(want)
	if err != nil {
		return err
	}
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	u := o.DeepCopy()
	u.Object["status"] = st
	_, err = c.client.Resource(GVR).Namespace(o.GetNamespace()).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	return err
}

// normalized compares statuses as JSON would store them.
func normalized(s Status) string {
	b, _ := json.Marshal(s)
	return string(b)
}
