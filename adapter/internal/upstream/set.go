package upstream

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime/schema"
	cmprovider "sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
)

// Ours is what this adapter serves itself (its rules and the lag
// metrics), for telling conflicts.
type Ours interface {
	ListCustom() []cmprovider.CustomMetricInfo
	ListExternal() []cmprovider.ExternalMetricInfo
}

// Set is the upstreams of one adapter. Safe for concurrent use; a nil
// *Set fronts nothing.
type Set struct {
	ups    []*Upstream
	logger *slog.Logger

	conflicts prometheus.Gauge
	up        *prometheus.GaugeVec

	mu   sync.Mutex
	seen string // the conflicts last logged
}

// NewSet groups upstreams; reg (may be nil) gets its self-metrics.
func NewSet(ups []*Upstream, reg prometheus.Registerer, logger *slog.Logger) *Set {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Set{ups: ups, logger: logger,
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "adapter_metric_name_conflicts", Help: "Metric names two providers claim (this adapter's rules and lag, and its upstreams): served by neither.",
		}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_upstream_discovery_up", Help: "1 when an upstream's last discovery answered; 0 while it fails (its last list is kept, its requests answer 503).",
		}, []string{"upstream"}),
	}
	if reg != nil {
		reg.MustRegister(s.conflicts, s.up)
	}
	return s
}

// Upstreams lists them.
func (s *Set) Upstreams() []*Upstream {
	if s == nil {
		return nil
	}
	return s.ups
}

// Run discovers every upstream every period until ctx ends, and reports
// name conflicts with ours whenever they change.
func (s *Set) Run(ctx context.Context, every time.Duration, ours Ours) {
	if s == nil || len(s.ups) == 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.DiscoverAll(ctx, ours)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// DiscoverAll runs one discovery of every upstream, then checks for
// conflicts.
func (s *Set) DiscoverAll(ctx context.Context, ours Ours) {
	for _, u := range s.ups {
		if err := u.Discover(ctx); err != nil {
			s.up.WithLabelValues(u.Name()).Set(0)
			s.logger.Error("upstream discovery failed; its last list is kept and its metrics answer 503 until it answers", "upstream", u.Name(), "err", err)
			continue
		}
		s.up.WithLabelValues(u.Name()).Set(1)
	}
	s.CheckConflicts(ours)
}

// CheckConflicts lists the names two providers claim and logs them when
// the list changed (at start, and whenever a discovery changes it).
func (s *Set) CheckConflicts(ours Ours) []string {
	if s == nil {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	check := func(what string, owners []string) {
		if len(owners) > 1 && !seen[what] {
			seen[what] = true
			out = append(out, what+" ("+strings.Join(owners, ", ")+")")
		}
	}
	var externals []string
	var customs []cmprovider.CustomMetricInfo
	if ours != nil {
		for _, e := range ours.ListExternal() {
			externals = append(externals, e.Metric)
		}
		customs = ours.ListCustom()
	}
	for _, u := range s.ups {
		c, e := u.Listed()
		externals = append(externals, e...)
		customs = append(customs, c...)
	}
	for _, name := range externals {
		check("external "+name, s.externalOwners(name, ours != nil && servesExternal(ours, name)))
	}
	for _, info := range customs {
		check("custom "+info.Metric+" on "+info.GroupResource.String(), s.customOwners(info.Metric, info.GroupResource, ours != nil && servesCustom(ours, info.Metric, info.GroupResource)))
	}
	sort.Strings(out)
	s.conflicts.Set(float64(len(out)))
	key := strings.Join(out, "; ")
	s.mu.Lock()
	changed := key != s.seen
	s.seen = key
	s.mu.Unlock()
	if changed && len(out) > 0 {
		s.logger.Error("metric names claimed by two providers are served by neither", "conflicts", out)
	}
	return out
}

func servesExternal(ours Ours, name string) bool {
	return slices.ContainsFunc(ours.ListExternal(), func(e cmprovider.ExternalMetricInfo) bool { return e.Metric == name })
}

func servesCustom(ours Ours, name string, gr schema.GroupResource) bool {
	return slices.ContainsFunc(ours.ListCustom(), func(c cmprovider.CustomMetricInfo) bool { return c.Metric == name && c.GroupResource == gr })
}

func (s *Set) externalOwners(name string, ours bool) []string {
	var owners []string
	if ours {
		owners = append(owners, Self)
	}
	for _, u := range s.ups {
		if u.ServesExternal(name) {
			owners = append(owners, "upstream "+u.Name())
		}
	}
	return owners
}

func (s *Set) customOwners(name string, gr schema.GroupResource, ours bool) []string {
	var owners []string
	if ours {
		owners = append(owners, Self)
	}
	for _, u := range s.ups {
		if u.ServesCustom(name, gr) {
			owners = append(owners, "upstream "+u.Name())
		}
	}
	return owners
}

// ExternalOwner is the upstream that serves an external metric: nil when
// none claims it (ours, or unknown), a Conflict error when two providers
// claim it. ours says whether this adapter serves it.
func (s *Set) ExternalOwner(name string, ours bool) (*Upstream, error) {
	if s == nil {
		return nil, nil
	}
	return s.owner(name, s.externalOwners(name, ours), func(u *Upstream) bool { return u.ServesExternal(name) })
}

// CustomOwner is ExternalOwner for a custom metric on a resource.
func (s *Set) CustomOwner(name string, gr schema.GroupResource, ours bool) (*Upstream, error) {
	if s == nil {
		return nil, nil
	}
	return s.owner(name, s.customOwners(name, gr, ours), func(u *Upstream) bool { return u.ServesCustom(name, gr) })
}

func (s *Set) owner(name string, owners []string, serves func(*Upstream) bool) (*Upstream, error) {
	switch {
	case len(owners) > 1:
		return nil, Conflict(name, owners)
	case len(owners) == 0 || owners[0] == Self:
		return nil, nil
	}
	for _, u := range s.ups {
		if serves(u) {
			return u, nil
		}
	}
	return nil, nil
}

// ListCustom is the union of what the upstreams' discoveries list.
func (s *Set) ListCustom() []cmprovider.CustomMetricInfo {
	if s == nil {
		return nil
	}
	var out []cmprovider.CustomMetricInfo
	for _, u := range s.ups {
		c, _ := u.Listed()
		out = append(out, c...)
	}
	return out
}

// ListExternal is the union of the upstreams' external metrics.
func (s *Set) ListExternal() []cmprovider.ExternalMetricInfo {
	if s == nil {
		return nil
	}
	var out []cmprovider.ExternalMetricInfo
	for _, u := range s.ups {
		_, e := u.Listed()
		for _, n := range e {
			out = append(out, cmprovider.ExternalMetricInfo{Metric: n})
		}
	}
	return out
}
