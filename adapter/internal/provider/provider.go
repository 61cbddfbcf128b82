// Package provider answers the custom and external metrics APIs from the
// store: it resolves which objects a request is about (from watch caches),
// reads their values, drops stale samples, and turns every failure into an
// error that says what is wrong and where — never a silent zero.
package provider

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/client-go/metadata"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"k8s.io/metrics/pkg/apis/external_metrics"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// Options configure the provider.
type Options struct {
	// MaxSampleAge: older samples are not served; the HPA sees them
	// missing rather than acting on stale data.
	MaxSampleAge time.Duration
	Store        store.Options
	// RediscoverAfter: a request for a metric the catalog lacks triggers a
	// discovery if the catalog is at least this old (default 5 s), so a
	// series that appeared since the last relist is served at once.
	RediscoverAfter time.Duration
}

// Provider implements the custom and external metrics providers.
type Provider struct {
	prom    *promsource.Source
	kafka   *lag.Source // nil without --kafka-bootstrap-servers
	mapper  apimeta.RESTMapper
	objects *objectIndex
	store   *store.Store
	metrics *selfmetrics.Metrics
	logger  *slog.Logger
	maxAge  time.Duration

	mu            sync.RWMutex
	cfg           *rules.Config
	catalog       *promsource.Catalog
	discoveryErr  error
	customInfos   []cmprovider.CustomMetricInfo
	externalInfos []cmprovider.ExternalMetricInfo

	callers sync.Map // user|api|metric already logged

	discoverMu      sync.Mutex // one discovery at a time
	lastDiscovery   time.Time
	rediscoverAfter time.Duration
}

// New builds a provider. Call Run to start discovery and the store.
func New(cfg *rules.Config, prom *promsource.Source, kafka *lag.Source, mapper apimeta.RESTMapper,
	meta metadata.Interface, stop <-chan struct{}, m *selfmetrics.Metrics, logger *slog.Logger, o Options) *Provider {
	p := &Provider{prom: prom, kafka: kafka, mapper: mapper, metrics: m, logger: logger, maxAge: o.MaxSampleAge,
		cfg: cfg, catalog: &promsource.Catalog{}, rediscoverAfter: o.RediscoverAfter}
	if p.rediscoverAfter == 0 {
		p.rediscoverAfter = 5 * time.Second
	}
	if meta != nil {
		p.objects = newObjectIndex(meta, stop)
	}
	so := o.Store
	so.Observe = func(r string) { m.StoreLookups.WithLabelValues(r).Inc() }
	p.store = store.New(p.fetch, so)
	p.setCatalog(&promsource.Catalog{}, nil)
	return p
}

// Run discovers metrics every relist period (and on Rediscover) and keeps
// wanted values fresh, until ctx ends.
func (p *Provider) Run(ctx context.Context, relist time.Duration, rediscover <-chan struct{}) {
	go p.store.Run(ctx)
	p.Discover(ctx)
	t := time.NewTicker(relist)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-rediscover:
		}
		p.Discover(ctx)
		p.metrics.StoreKeys.Set(float64(p.store.Len()))
	}
}

// SetConfig replaces the rules (after a reload) and forgets values that
// were fetched under the old ones.
func (p *Provider) SetConfig(ctx context.Context, cfg *rules.Config) {
	p.mu.Lock()
	p.cfg = cfg
	p.mu.Unlock()
	p.Forget()
	p.Discover(ctx)
}

// Forget drops every stored value, so the next reads fetch (rule changes
// do this; benchmarks use it for cold reads).
func (p *Provider) Forget() { p.store.Reset() }

// Discover asks Prometheus what the rules yield now.
func (p *Provider) Discover(ctx context.Context) {
	p.discoverMu.Lock()
	defer p.discoverMu.Unlock()
	p.discover(ctx)
}

// discoverOnMiss runs a discovery for a request that named a metric the
// catalog lacks — a series that appeared since the last relist should not
// wait for the next one — unless the catalog is younger than
// RediscoverAfter. It reports whether it ran.
func (p *Provider) discoverOnMiss(ctx context.Context) bool {
	p.discoverMu.Lock()
	defer p.discoverMu.Unlock()
	if time.Since(p.lastDiscovery) < p.rediscoverAfter {
		return false
	}
	p.discover(ctx)
	return true
}

func (p *Provider) discover(ctx context.Context) {
	defer func() { p.lastDiscovery = time.Now() }()
	p.mu.RLock()
	cfg := p.cfg
	p.mu.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cat, err := p.prom.Discover(ctx, cfg)
	if err != nil {
		p.logger.Error("metric discovery failed", "err", err)
	}
	p.setCatalog(cat, err)
}

func (p *Provider) setCatalog(cat *promsource.Catalog, err error) {
	var custom []cmprovider.CustomMetricInfo
	seen := map[cmprovider.CustomMetricInfo]bool{}
	for name, ms := range cat.Custom {
		for _, m := range ms {
			for _, gr := range m.Resources {
				gr, namespaced := p.normalize(gr)
				info := cmprovider.CustomMetricInfo{GroupResource: gr, Namespaced: namespaced, Metric: name}
				if !seen[info] {
					seen[info] = true
					custom = append(custom, info)
				}
			}
		}
	}
	sort.Slice(custom, func(i, j int) bool { return custom[i].String() < custom[j].String() })
	var external []cmprovider.ExternalMetricInfo
	for name := range cat.External {
		external = append(external, cmprovider.ExternalMetricInfo{Metric: name})
	}
	if p.kafka != nil {
		external = append(external, cmprovider.ExternalMetricInfo{Metric: lag.MetricLag}, cmprovider.ExternalMetricInfo{Metric: lag.MetricLagSeconds})
	}
	sort.Slice(external, func(i, j int) bool { return external[i].Metric < external[j].Metric })
	p.mu.Lock()
	if err == nil || len(cat.Custom)+len(cat.External) > 0 || p.catalog == nil {
		p.catalog = cat
		p.customInfos, p.externalInfos = custom, external
	}
	p.discoveryErr = err
	p.mu.Unlock()
	p.metrics.DiscoveredMetrics.WithLabelValues("custom").Set(float64(len(custom)))
	p.metrics.DiscoveredMetrics.WithLabelValues("external").Set(float64(len(external)))
}

// normalize turns a rule's resource ("pod") into the API's ("pods") and
// says whether it is namespaced.
func (p *Provider) normalize(gr schema.GroupResource) (schema.GroupResource, bool) {
	if p.mapper != nil {
		if gvr, err := p.mapper.ResourceFor(gr.WithVersion("")); err == nil {
			gr = gvr.GroupResource()
		}
	}
	if gr.Group == "" && gr.Resource == "namespaces" {
		return gr, false
	}
	if p.mapper != nil {
		if gvk, err := p.mapper.KindFor(gr.WithVersion("")); err == nil {
			if m, err := p.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err == nil {
				return gr, m.Scope.Name() == apimeta.RESTScopeNameNamespace
			}
		}
	}
	return gr, true
}

// ListAllMetrics lists the custom metrics the rules yield now.
func (p *Provider) ListAllMetrics() []cmprovider.CustomMetricInfo {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.customInfos
}

// ListAllExternalMetrics lists the external metrics.
func (p *Provider) ListAllExternalMetrics() []cmprovider.ExternalMetricInfo {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.externalInfos
}

// lookupCustom finds the metric serving name on gr in the catalog.
func (p *Provider) lookupCustom(name string, gr schema.GroupResource) (promsource.Metric, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, m := range p.catalog.Custom[name] {
		for _, r := range m.Resources {
			if rules.SameResource(r, gr) {
				return m, true
			}
		}
	}
	return promsource.Metric{}, false
}

// requireCustom is lookupCustom for a request: on a miss it rediscovers
// once (rate-limited), then answers with an error naming what exists.
func (p *Provider) requireCustom(ctx context.Context, name string, gr schema.GroupResource) (promsource.Metric, error) {
	if m, ok := p.lookupCustom(name, gr); ok {
		return m, nil
	}
	if p.discoverOnMiss(ctx) {
		if m, ok := p.lookupCustom(name, gr); ok {
			return m, nil
		}
	}
	return promsource.Metric{}, p.notServed(name, gr)
}

// notServed explains a missing metric: which metrics exist for the
// resource, and whether the name is a series a rule renames.
func (p *Provider) notServed(name string, gr schema.GroupResource) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var avail []string
	for _, info := range p.customInfos {
		if rules.SameResource(info.GroupResource, gr) {
			avail = append(avail, info.Metric)
		}
	}
	msg := fmt.Sprintf("metric %s is not served for %s", name, gr)
	for n, ms := range p.catalog.Custom {
		for _, m := range ms {
			if m.Series == name && n != name {
				msg += fmt.Sprintf("; %s is a Prometheus series that rule %s serves as %s", name, m.Rule.Source, n)
			}
		}
	}
	if len(avail) > 0 {
		msg += "; metrics for " + gr.String() + ": " + strings.Join(avail, ", ")
	} else {
		msg += "; no metrics are served for " + gr.String()
	}
	if p.discoveryErr != nil {
		msg += " (last discovery failed: " + p.discoveryErr.Error() + ")"
	}
	return notFound(msg)
}

func notFound(msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 404, Reason: metav1.StatusReasonNotFound, Message: msg}}
}

func unavailable(msg string) *apierrors.StatusError {
	return apierrors.NewServiceUnavailable(msg)
}

func badRequest(msg string) *apierrors.StatusError { return apierrors.NewBadRequest(msg) }

// fetch is the store's source: it decodes a key into a query.
func (p *Provider) fetch(ctx context.Context, k store.Key) ([]store.Sample, error) {
	sel, err := labels.Parse(k.Selector)
	if err != nil {
		return nil, err
	}
	if k.API == "external" {
		if p.kafka != nil && (k.Metric == lag.MetricLag || k.Metric == lag.MetricLagSeconds) {
			f, err := lag.ParseSelector(sel)
			if err != nil {
				return nil, err
			}
			return p.kafka.Fetch(ctx, k.Metric, f)
		}
		ms, err := rules.SelectorMatchers(sel)
		if err != nil {
			return nil, err
		}
		p.mu.RLock()
		metrics := p.catalog.External[k.Metric]
		p.mu.RUnlock()
		if len(metrics) == 0 {
			return nil, fmt.Errorf("external metric %s is no longer served", k.Metric)
		}
		return p.prom.FetchExternal(ctx, promsource.ExternalQuery{Metric: metrics[0], Namespace: k.Namespace, Selector: ms})
	}
	gr := schema.ParseGroupResource(k.Resource)
	m, ok := p.lookupCustom(k.Metric, gr)
	if !ok {
		return nil, p.notServed(k.Metric, gr)
	}
	ms, err := rules.SelectorMatchers(sel)
	if err != nil {
		return nil, err
	}
	q := promsource.CustomQuery{Metric: m, Resource: gr, Namespace: k.Namespace, Selector: ms}
	if gr.Group == "" && gr.Resource == "namespaces" {
		q.Namespace, q.Object = "", k.Namespace
	}
	return p.prom.FetchCustom(ctx, q)
}

// observe records one API request's outcome and logs it with the caller's
// identity (who asks for what, and what went wrong).
func (p *Provider) observe(ctx context.Context, api, metric, ns string, start time.Time, err error) {
	p.metrics.RequestSeconds.WithLabelValues(api, metric).Observe(time.Since(start).Seconds())
	user := ""
	if u, ok := request.UserFrom(ctx); ok {
		user = u.GetName()
	}
	if err != nil {
		reason := "backend"
		if se, ok := err.(*apierrors.StatusError); ok {
			reason = strings.ToLower(string(se.ErrStatus.Reason))
		}
		p.metrics.RequestErrors.WithLabelValues(api, metric, reason).Inc()
		p.logger.Warn("metric request failed", "api", api, "metric", metric, "namespace", ns, "user", user, "err", err)
		return
	}
	// Who reads which metric, once per caller and metric: the identity the
	// API server passed through the aggregation layer, without logging
	// every HPA poll.
	if _, seen := p.callers.LoadOrStore(user+"|"+api+"|"+metric, true); !seen {
		p.logger.Info("serving a metric to a new caller", "api", api, "metric", metric, "namespace", ns, "user", user)
	}
	p.logger.Debug("metric request", "api", api, "metric", metric, "namespace", ns, "user", user, "seconds", time.Since(start).Seconds())
}

// get reads a key from the store and keeps the samples young enough.
func (p *Provider) get(ctx context.Context, k store.Key) ([]store.Sample, time.Time, error) {
	v, err := p.store.Get(ctx, k)
	if err != nil {
		return nil, time.Time{}, unavailable(fmt.Sprintf("%s: %v", k.Metric, err))
	}
	if v.Err != nil {
		if se, ok := v.Err.(*apierrors.StatusError); ok {
			return nil, time.Time{}, se
		}
		return nil, time.Time{}, unavailable(fmt.Sprintf("%s: %v", k.Metric, v.Err))
	}
	now := time.Now()
	fresh := v.Samples[:0:0]
	var newest time.Time
	for _, s := range v.Samples {
		if s.Timestamp.After(newest) {
			newest = s.Timestamp
		}
		if p.maxAge > 0 && now.Sub(s.Timestamp) > p.maxAge {
			p.metrics.StaleDropped.WithLabelValues(k.Metric).Inc()
			continue
		}
		p.metrics.SampleAge.WithLabelValues(k.Metric).Observe(now.Sub(s.Timestamp).Seconds())
		fresh = append(fresh, s)
	}
	return fresh, newest, nil
}

// Quantity rounds to milli-units (0.0004 is 0, 0.0005 is 1m): never
// truncated.
func Quantity(v float64) resource.Quantity {
	if math.Abs(v) < 9e12 {
		return *resource.NewMilliQuantity(int64(math.Round(v*1000)), resource.DecimalSI)
	}
	return *resource.NewQuantity(int64(math.Round(v)), resource.DecimalSI)
}

func (p *Provider) staleMsg(metric string, newest time.Time) string {
	if newest.IsZero() {
		return ""
	}
	return fmt.Sprintf(" (newest sample %s old, --max-sample-age is %s)", time.Since(newest).Round(time.Second), p.maxAge)
}

// GetMetricByName returns the metric of one object.
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info cmprovider.CustomMetricInfo, metricSelector labels.Selector) (v *custom_metrics.MetricValue, err error) {
	start := time.Now()
	defer func() { p.observe(ctx, "custom", info.Metric, name.Namespace, start, err) }()
	list, err := p.values(ctx, name.Namespace, info, metricSelector, []string{name.Name})
	if err != nil {
		return nil, err
	}
	return &list.Items[0], nil
}

// GetMetricBySelector returns the metric of every object the selector
// matches that has a fresh value.
func (p *Provider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info cmprovider.CustomMetricInfo, metricSelector labels.Selector) (v *custom_metrics.MetricValueList, err error) {
	start := time.Now()
	defer func() { p.observe(ctx, "custom", info.Metric, namespace, start, err) }()
	if p.objects == nil {
		return nil, unavailable("the adapter has no Kubernetes client to resolve label selectors")
	}
	// The metric first: an HPA asking for a name no rule serves must be
	// told which name to use, whatever its selector matches.
	if _, err := p.requireCustom(ctx, info.Metric, info.GroupResource); err != nil {
		return nil, err
	}
	gvr, err := p.mapper.ResourceFor(info.GroupResource.WithVersion(""))
	if err != nil {
		return nil, badRequest(fmt.Sprintf("unknown resource %s: %v", info.GroupResource, err))
	}
	names, err := p.objects.Names(ctx, gvr, namespace, selector)
	if err != nil {
		return nil, unavailable(err.Error())
	}
	if len(names) == 0 {
		return nil, notFound(fmt.Sprintf("no %s match selector %q in namespace %q", info.GroupResource, selector, namespace))
	}
	return p.values(ctx, namespace, info, metricSelector, names)
}

func (p *Provider) values(ctx context.Context, namespace string, info cmprovider.CustomMetricInfo, metricSelector labels.Selector, names []string) (*custom_metrics.MetricValueList, error) {
	if _, err := p.requireCustom(ctx, info.Metric, info.GroupResource); err != nil {
		return nil, err
	}
	key := store.Key{API: "custom", Metric: info.Metric, Resource: info.GroupResource.String(), Namespace: namespace, Selector: selectorString(metricSelector)}
	if info.GroupResource.Group == "" && info.GroupResource.Resource == "namespaces" && len(names) == 1 {
		key.Namespace = names[0]
	}
	samples, newest, err := p.get(ctx, key)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]store.Sample, len(samples))
	for _, s := range samples {
		byName[s.Object] = s
	}
	ref, err := p.reference(info)
	if err != nil {
		return nil, err
	}
	ms := metricLabelSelector(metricSelector)
	list := &custom_metrics.MetricValueList{}
	for _, n := range names {
		s, ok := byName[n]
		if !ok {
			continue
		}
		r := ref
		r.Name = n
		if info.Namespaced {
			r.Namespace = namespace
		}
		list.Items = append(list.Items, custom_metrics.MetricValue{
			DescribedObject: r,
			Metric:          custom_metrics.MetricIdentifier{Name: info.Metric, Selector: ms},
			Timestamp:       metav1.NewTime(s.Timestamp),
			Value:           Quantity(s.Value),
		})
	}
	if len(list.Items) == 0 {
		what := fmt.Sprintf("%d %s", len(names), info.GroupResource)
		if len(names) == 1 {
			what = fmt.Sprintf("%s %s", info.GroupResource, names[0])
		}
		return nil, notFound(fmt.Sprintf("no fresh value of %s for %s in namespace %q: Prometheus has values for %d other objects%s",
			info.Metric, what, namespace, len(samples), p.staleMsg(info.Metric, newest)))
	}
	return list, nil
}

func (p *Provider) reference(info cmprovider.CustomMetricInfo) (custom_metrics.ObjectReference, error) {
	gvk, err := p.mapper.KindFor(info.GroupResource.WithVersion(""))
	if err != nil {
		return custom_metrics.ObjectReference{}, badRequest(fmt.Sprintf("unknown resource %s: %v", info.GroupResource, err))
	}
	return custom_metrics.ObjectReference{APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind}, nil
}

func selectorString(s labels.Selector) string {
	if s == nil || s.Empty() {
		return ""
	}
	return s.String()
}

func metricLabelSelector(s labels.Selector) *metav1.LabelSelector {
	if s == nil || s.Empty() {
		return nil
	}
	ls, err := metav1.ParseToLabelSelector(s.String())
	if err != nil {
		return nil
	}
	return ls
}

// GetExternalMetric returns an external metric's values.
func (p *Provider) GetExternalMetric(ctx context.Context, namespace string, metricSelector labels.Selector, info cmprovider.ExternalMetricInfo) (v *external_metrics.ExternalMetricValueList, err error) {
	start := time.Now()
	defer func() { p.observe(ctx, "external", info.Metric, namespace, start, err) }()
	known := func() bool {
		for _, e := range p.ListAllExternalMetrics() {
			if e.Metric == info.Metric {
				return true
			}
		}
		return false
	}
	if !known() && !(p.discoverOnMiss(ctx) && known()) {
		var names []string
		for _, e := range p.ListAllExternalMetrics() {
			names = append(names, e.Metric)
		}
		return nil, notFound(fmt.Sprintf("external metric %s is not served; external metrics: %s", info.Metric, strings.Join(names, ", ")))
	}
	if info.Metric == lag.MetricLag || info.Metric == lag.MetricLagSeconds {
		if _, err := lag.ParseSelector(metricSelector); err != nil {
			return nil, badRequest(err.Error())
		}
		namespace = "" // lag belongs to Kafka, not to a namespace
	}
	key := store.Key{API: "external", Metric: info.Metric, Namespace: namespace, Selector: selectorString(metricSelector)}
	samples, newest, err := p.get(ctx, key)
	if err != nil {
		return nil, err
	}
	if len(samples) == 0 {
		return nil, notFound(fmt.Sprintf("no fresh value of external metric %s for selector %q%s", info.Metric, selectorString(metricSelector), p.staleMsg(info.Metric, newest)))
	}
	list := &external_metrics.ExternalMetricValueList{}
	for _, s := range samples {
		list.Items = append(list.Items, external_metrics.ExternalMetricValue{
			MetricName: info.Metric, MetricLabels: s.Labels, Timestamp: metav1.NewTime(s.Timestamp), Value: Quantity(s.Value),
		})
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return fmt.Sprint(list.Items[i].MetricLabels) < fmt.Sprint(list.Items[j].MetricLabels)
	})
	return list, nil
}
