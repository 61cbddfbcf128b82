// Package metricsapi answers the custom and external metrics APIs. It only
// reads: the catalog (which metrics exist), the watch caches (which objects
// a selector names) and the store (their values); it never calls a
// backend. It drops stale samples and turns every failure into an error
// that says what is wrong and where — never a silent zero.
package metricsapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
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

	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
	"github.com/purchase-system/purchase-system/adapter/internal/upstream"
)

// Options configure the provider.
type Options struct {
	// MaxSampleAge: older samples are not served; the HPA sees them
	// missing rather than acting on stale data.
	MaxSampleAge time.Duration
	// LagAccess decides which namespaces may read which consumer groups'
	// lag (nil: every namespace, every group).
	LagAccess func(namespace string, q lag.Query) (lag.Query, error)
	// LagEnabled lists the Kafka lag metrics.
	LagEnabled bool
	// Upstreams are the providers the adapter fronts: a metric this
	// adapter does not serve goes to the one that claims it (nil: none).
	Upstreams *upstream.Set
	Metrics   *Metrics
	Logger    *slog.Logger
}

// Provider implements the custom and external metrics providers.
type Provider struct {
	catalog *catalog.Catalog
	store   *store.Store
	mapper  apimeta.RESTMapper
	objects *objectIndex
	o       Options

	callers sync.Map // user|api|metric already logged
}

// New builds a provider reading cat and st. meta (object metadata, for
// label selectors) may be nil in tests that ask by name only.
func New(cat *catalog.Catalog, st *store.Store, mapper apimeta.RESTMapper, meta metadata.Interface, stop <-chan struct{}, o Options) *Provider {
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Provider{catalog: cat, store: st, mapper: mapper, o: o}
	if meta != nil {
		p.objects = newObjectIndex(meta, stop)
	}
	return p
}

// ListAllMetrics lists the custom metrics the rules yield now, and the
// upstreams' (the union).
func (p *Provider) ListAllMetrics() []cmprovider.CustomMetricInfo {
	return union(p.catalog.ListCustom(), p.o.Upstreams.ListCustom())
}

// ListAllExternalMetrics lists the external metrics, the upstreams'
// included.
func (p *Provider) ListAllExternalMetrics() []cmprovider.ExternalMetricInfo {
	return union(p.catalog.ListExternal(), p.o.Upstreams.ListExternal())
}

// union appends what b adds to a (a is the catalog's list: never changed
// in place).
func union[T comparable](a, b []T) []T {
	if len(b) == 0 {
		return a
	}
	seen := make(map[T]bool, len(a)+len(b))
	out := make([]T, 0, len(a)+len(b))
	for _, l := range [][]T{a, b} {
		for _, x := range l {
			if !seen[x] {
				seen[x] = true
				out = append(out, x)
			}
		}
	}
	return out
}

func notFound(msg string) *apierrors.StatusError {
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 404, Reason: metav1.StatusReasonNotFound, Message: msg}}
}

func unavailable(msg string) *apierrors.StatusError { return apierrors.NewServiceUnavailable(msg) }

func badRequest(msg string) *apierrors.StatusError { return apierrors.NewBadRequest(msg) }

// asStatus turns a catalog or store error into the API's answer.
func asStatus(metric string, err error) error {
	var nf *catalog.NotFoundError
	switch {
	case errors.As(err, &nf):
		return notFound(nf.Msg)
	case errors.Is(err, store.ErrTooManyQueries):
		return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 429, Reason: metav1.StatusReasonTooManyRequests,
			Message: fmt.Sprintf("%s: %v", metric, err)}}
	}
	var se *apierrors.StatusError
	if errors.As(err, &se) {
		return se
	}
	return unavailable(fmt.Sprintf("%s: %v", metric, err))
}

// observe records one API request's outcome and logs it with the caller's
// identity (who asks for what, and what went wrong). Only metrics that
// exist name their own label value: any name a caller invents would be a
// new series.
func (p *Provider) observe(ctx context.Context, api, metric string, known bool, ns string, start time.Time, err error) {
	label := metric
	if !known {
		label = "<unknown>"
	}
	p.o.Metrics.requestSeconds.WithLabelValues(api, label).Observe(time.Since(start).Seconds())
	user := ""
	if u, ok := request.UserFrom(ctx); ok {
		user = u.GetName()
	}
	if err != nil {
		reason := "backend"
		var se *apierrors.StatusError
		if errors.As(err, &se) {
			reason = strings.ToLower(string(se.ErrStatus.Reason))
		}
		p.o.Metrics.requestErrors.WithLabelValues(api, label, reason).Inc()
		p.o.Logger.Warn("metric request failed", "api", api, "metric", metric, "namespace", ns, "user", user, "err", err)
		return
	}
	// Who reads which metric, once per caller and metric: the identity the
	// API server passed through the aggregation layer, without logging
	// every HPA poll.
	if _, seen := p.callers.LoadOrStore(user+"|"+api+"|"+metric, true); !seen {
		p.o.Logger.Info("serving a metric to a new caller", "api", api, "metric", metric, "namespace", ns, "user", user)
	}
	p.o.Logger.Debug("metric request", "api", api, "metric", metric, "namespace", ns, "user", user, "seconds", time.Since(start).Seconds())
}

// Read is a store read with the samples young enough to serve.
type Read struct {
	Value  store.Value
	Fresh  []store.Sample
	Stale  []store.Sample // older than MaxSampleAge, or without a timestamp
	Newest time.Time
}

// read gets q's value from the store, charged to the asking namespace's
// budget, and splits it into fresh and stale samples.
func (p *Provider) read(ctx context.Context, namespace, metric string, q store.Query) (Read, error) {
	v, err := p.store.Get(ctx, store.InNamespace(namespace, q))
	if err != nil {
		return Read{}, asStatus(metric, err)
	}
	if v.Err != nil {
		return Read{}, asStatus(metric, v.Err)
	}
	r := p.Split(metric, v)
	return r, nil
}

// Split sorts a stored value's samples into those served and those too
// old, counting them.
func (p *Provider) Split(metric string, v store.Value) Read {
	r := Read{Value: v, Fresh: make([]store.Sample, 0, len(v.Samples))}
	now := time.Now()
	age := p.o.Metrics.sampleAge.WithLabelValues(metric)
	for _, s := range v.Samples {
		if s.Timestamp.After(r.Newest) {
			r.Newest = s.Timestamp
		}
		if s.Timestamp.IsZero() || (p.o.MaxSampleAge > 0 && now.Sub(s.Timestamp) > p.o.MaxSampleAge) {
			p.o.Metrics.staleDropped.WithLabelValues(metric).Inc()
			r.Stale = append(r.Stale, s)
			continue
		}
		age.Observe(now.Sub(s.Timestamp).Seconds())
		r.Fresh = append(r.Fresh, s)
	}
	return r
}

// Quantity rounds to milli-units (0.0004 is 0, 0.0005 is 1m): never
// truncated. Values too large for milli-units in an int64 keep their
// magnitude in a decimal exponent instead of overflowing.
func Quantity(v float64) resource.Quantity {
	if math.Abs(v) < 9e15 {
		return *resource.NewMilliQuantity(int64(math.Round(v*1000)), resource.DecimalSI)
	}
	q, err := resource.ParseQuantity(strings.Replace(strconv.FormatFloat(v, 'g', 15, 64), "e+", "e", 1))
	if err != nil {
		return *resource.NewQuantity(math.MaxInt64, resource.DecimalSI)
	}
	return q
}

func (p *Provider) staleMsg(newest time.Time) string {
	if newest.IsZero() {
		return ""
	}
	return fmt.Sprintf(" (newest sample %s old, --max-sample-age is %s)", time.Since(newest).Round(time.Second), p.o.MaxSampleAge)
}

// CustomQuery builds the store query of a custom metric request: the
// catalog names the rule and series; the metric selector becomes label
// matchers.
func (p *Provider) CustomQuery(ctx context.Context, namespace string, info cmprovider.CustomMetricInfo, metricSelector labels.Selector, names []string) (promsource.CustomQuery, error) {
	m, err := p.catalog.RequireCustom(ctx, namespace, info.Metric, info.GroupResource)
	if err != nil {
		return promsource.CustomQuery{}, asStatus(info.Metric, err)
	}
	ms, err := rules.SelectorMatchers(metricSelector)
	if err != nil {
		return promsource.CustomQuery{}, badRequest(err.Error())
	}
	q := promsource.CustomQuery{Metric: m, Resource: info.GroupResource, Namespace: namespace, Selector: ms}
	switch {
	case m.Rule.UsesLabelValues():
		q.Objects = append([]string(nil), names...)
		sort.Strings(q.Objects)
	case info.GroupResource.Group == "" && info.GroupResource.Resource == "namespaces" && len(names) == 1:
		q.Namespace, q.Object = "", names[0]
	}
	return q, nil
}

// GetMetricByName returns the metric of one object.
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info cmprovider.CustomMetricInfo, metricSelector labels.Selector) (v *custom_metrics.MetricValue, err error) {
	start := time.Now()
	known := p.knownCustom(name.Namespace, info)
	defer func() { p.observe(ctx, "custom", info.Metric, known, name.Namespace, start, err) }()
	if u, err := p.o.Upstreams.CustomOwner(info.Metric, info.GroupResource, known); err != nil || u != nil {
		known = true
		if err != nil {
			return nil, err
		}
		list, err := u.Custom(ctx, upstream.CustomRequest{Info: info, Namespace: name.Namespace, Name: name.Name, Metric: metricSelector})
		if err != nil {
			return nil, err
		}
		if len(list.Items) == 0 {
			return nil, notFound(fmt.Sprintf("upstream %s has no value of %s for %s %s", u.Name(), info.Metric, info.GroupResource, name.Name))
		}
		return &list.Items[0], nil
	}
	list, err := p.values(ctx, name.Namespace, info, metricSelector, []string{name.Name})
	if err != nil {
		return nil, err
	}
	return &list.Items[0], nil
}

func (p *Provider) knownCustom(ns string, info cmprovider.CustomMetricInfo) bool {
	_, ok := p.catalog.Custom(ns, info.Metric, info.GroupResource)
	return ok
}

// GetMetricBySelector returns the metric of every object the selector
// matches that has a fresh value.
func (p *Provider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info cmprovider.CustomMetricInfo, metricSelector labels.Selector) (v *custom_metrics.MetricValueList, err error) {
	start := time.Now()
	known := p.knownCustom(namespace, info)
	defer func() { p.observe(ctx, "custom", info.Metric, known, namespace, start, err) }()
	if u, err := p.o.Upstreams.CustomOwner(info.Metric, info.GroupResource, known); err != nil || u != nil {
		known = true
		if err != nil {
			return nil, err
		}
		return u.Custom(ctx, upstream.CustomRequest{Info: info, Namespace: namespace, Selector: selector, Metric: metricSelector})
	}
	names, err := p.Objects(ctx, namespace, info, selector)
	if err != nil {
		return nil, err
	}
	return p.values(ctx, namespace, info, metricSelector, names)
}

// Objects resolves a label selector to object names from the watch
// caches. The metric is checked first: an HPA asking for a name no rule
// serves must be told which name to use, whatever its selector matches,
// and an informer is never started for a resource no metric is about.
func (p *Provider) Objects(ctx context.Context, namespace string, info cmprovider.CustomMetricInfo, selector labels.Selector) ([]string, error) {
	if _, err := p.catalog.RequireCustom(ctx, namespace, info.Metric, info.GroupResource); err != nil {
		return nil, asStatus(info.Metric, err)
	}
	if p.objects == nil {
		return nil, unavailable("the adapter has no Kubernetes client to resolve label selectors")
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
	return names, nil
}

func (p *Provider) values(ctx context.Context, namespace string, info cmprovider.CustomMetricInfo, metricSelector labels.Selector, names []string) (*custom_metrics.MetricValueList, error) {
	q, err := p.CustomQuery(ctx, namespace, info, metricSelector, names)
	if err != nil {
		return nil, err
	}
	r, err := p.read(ctx, namespace, info.Metric, q)
	if err != nil {
		return nil, err
	}
	return p.CustomList(namespace, info, metricSelector, names, r)
}

// CustomList builds the answer from a read: one value per named object
// that has a fresh sample. Both the names and the samples are sorted by
// object, so they are joined in one pass (at 1,000 pods a map per request
// was a tenth of the adapter's time).
func (p *Provider) CustomList(namespace string, info cmprovider.CustomMetricInfo, metricSelector labels.Selector, names []string, r Read) (*custom_metrics.MetricValueList, error) {
	fresh := r.Fresh
	if !sort.SliceIsSorted(fresh, func(i, j int) bool { return fresh[i].Object < fresh[j].Object }) {
		fresh = append([]store.Sample(nil), fresh...)
		sort.Slice(fresh, func(i, j int) bool { return fresh[i].Object < fresh[j].Object })
	}
	if !sort.StringsAreSorted(names) {
		names = append([]string(nil), names...)
		sort.Strings(names)
	}
	ref, err := p.reference(info)
	if err != nil {
		return nil, err
	}
	ms := metricLabelSelector(metricSelector)
	list := &custom_metrics.MetricValueList{Items: make([]custom_metrics.MetricValue, 0, min(len(names), len(fresh)))}
	i := 0
	for _, n := range names {
		for i < len(fresh) && fresh[i].Object < n {
			i++
		}
		if i == len(fresh) || fresh[i].Object != n {
			continue
		}
		s := fresh[i]
		o := ref
		o.Name = n
		if info.Namespaced {
			o.Namespace = namespace
		}
		list.Items = append(list.Items, custom_metrics.MetricValue{
			DescribedObject: o,
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
			info.Metric, what, namespace, len(r.Fresh), p.staleMsg(r.Newest)))
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

func isLag(metric string) bool { return metric == lag.MetricLag || metric == lag.MetricLagSeconds }

// ExternalQuery builds the store query of an external metric request.
func (p *Provider) ExternalQuery(ctx context.Context, namespace string, metricSelector labels.Selector, metric string) (store.Query, error) {
	if isLag(metric) && p.o.LagEnabled {
		q, err := lag.ParseSelector(metricSelector)
		if err != nil {
			return nil, badRequest(err.Error())
		}
		if p.o.LagAccess != nil {
			if q, err = p.o.LagAccess(namespace, q); err != nil {
				return nil, apierrors.NewForbidden(schema.GroupResource{Group: "external.metrics.k8s.io", Resource: metric}, q.Key(), err)
			}
		}
		return q, nil
	}
	m, ok := p.catalog.External(namespace, metric)
	if !ok {
		p.catalog.Refresh(ctx)
		if m, ok = p.catalog.External(namespace, metric); !ok {
			return nil, asStatus(metric, p.catalog.NotServedExternal(namespace, metric))
		}
	}
	ms, err := rules.SelectorMatchers(metricSelector)
	if err != nil {
		return nil, badRequest(err.Error())
	}
	return promsource.ExternalQuery{Metric: m, Namespace: namespace, Selector: ms}, nil
}

// GetExternalMetric returns an external metric's values.
func (p *Provider) GetExternalMetric(ctx context.Context, namespace string, metricSelector labels.Selector, info cmprovider.ExternalMetricInfo) (v *external_metrics.ExternalMetricValueList, err error) {
	start := time.Now()
	known := (isLag(info.Metric) && p.o.LagEnabled)
	if !known {
		_, known = p.catalog.External(namespace, info.Metric)
	}
	defer func() { p.observe(ctx, "external", info.Metric, known, namespace, start, err) }()
	if u, err := p.o.Upstreams.ExternalOwner(info.Metric, known); err != nil || u != nil {
		known = true
		if err != nil {
			return nil, err
		}
		return u.External(ctx, namespace, info.Metric, metricSelector)
	}
	q, err := p.ExternalQuery(ctx, namespace, metricSelector, info.Metric)
	if err != nil {
		return nil, err
	}
	r, err := p.read(ctx, namespace, info.Metric, q)
	if err != nil {
		return nil, err
	}
	return p.ExternalList(info.Metric, metricSelector, r)
}

// ExternalList builds the answer from a read.
func (p *Provider) ExternalList(metric string, metricSelector labels.Selector, r Read) (*external_metrics.ExternalMetricValueList, error) {
	list := &external_metrics.ExternalMetricValueList{}
	for _, s := range r.Fresh {
		if s.Metric != "" && s.Metric != metric {
			continue // the other metric of a shared computation
		}
		list.Items = append(list.Items, external_metrics.ExternalMetricValue{
			MetricName: metric, MetricLabels: s.Labels, Timestamp: metav1.NewTime(s.Timestamp), Value: Quantity(s.Value),
		})
	}
	if len(list.Items) == 0 {
		sel := ""
		if metricSelector != nil {
			sel = metricSelector.String()
		}
		return nil, notFound(fmt.Sprintf("no fresh value of external metric %s for selector %q%s", metric, sel, p.staleMsg(r.Newest)))
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return fmt.Sprint(list.Items[i].MetricLabels) < fmt.Sprint(list.Items[j].MetricLabels)
	})
	return list, nil
}
