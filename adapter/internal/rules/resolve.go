package rules

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Resolver turns a resource as a rule writes it — a kind, a singular or a
// plural, with or without its group ("ingress", "Ingress",
// "ingresses.networking.k8s.io") — into the resource the cluster serves,
// as prometheus-adapter does through the REST mapper: a rule mapping
// "ingress" serves ingresses.networking.k8s.io.
type Resolver interface {
	// Resolve names the served resource, or says that none is served.
	Resolve(gr schema.GroupResource) (schema.GroupResource, error)
	// Singular is a served resource's singular name (what a resources
	// template renders: <<.Resource>> of ingresses is "ingress").
	Singular(gr schema.GroupResource) string
}

// MapperResolver resolves through a REST mapper (the adapter's follows
// the cluster's discovery, so a CRD installed later resolves at the next
// discovery round).
func MapperResolver(m apimeta.RESTMapper) Resolver { return mapperResolver{m} }

type mapperResolver struct{ m apimeta.RESTMapper }

// groupSanitizer is how a resources template writes a group into a label
// name (networking.k8s.io → networking_k8s_io), as prometheus-adapter's.
var groupSanitizer = strings.NewReplacer(".", "_", "-", "_")

func (r mapperResolver) Resolve(gr schema.GroupResource) (schema.GroupResource, error) {
	want := schema.GroupVersionResource{Group: gr.Group, Resource: strings.ToLower(gr.Resource)}
	if gvr, err := r.m.ResourceFor(want); err == nil {
		return gvr.GroupResource(), nil
	}
	// A group as a template writes it (networking_k8s_io), or a group the
	// cluster does not serve: look at the resource in every group.
	all, err := r.m.ResourcesFor(schema.GroupVersionResource{Resource: want.Resource})
	var served []schema.GroupResource
	seen := map[schema.GroupResource]bool{}
	for _, gvr := range all {
		g := gvr.GroupResource()
		if !seen[g] {
			seen[g] = true
			served = append(served, g)
		}
	}
	if err != nil || len(served) == 0 {
		return schema.GroupResource{}, fmt.Errorf("%s is not a resource this cluster serves", gr)
	}
	for _, g := range served {
		if gr.Group != "" && groupSanitizer.Replace(g.Group) == gr.Group {
			return g, nil
		}
	}
	if gr.Group == "" && len(served) > 1 {
		return schema.GroupResource{}, fmt.Errorf("%s is served in more than one group (%s): set the group", gr.Resource, groupList(served))
	}
	return schema.GroupResource{}, fmt.Errorf("%s is not served by this cluster; %s is served as %s: set group: %q", gr, gr.Resource, groupList(served), served[0].Group)
}

func groupList(served []schema.GroupResource) string {
	names := make([]string, len(served))
	for i, g := range served {
		names[i] = g.String()
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func (r mapperResolver) Singular(gr schema.GroupResource) string {
	if s, err := r.m.ResourceSingularizer(gr.Resource); err == nil && s != "" {
		return s
	}
	return strings.TrimSuffix(gr.Resource, "s")
}

// ErrNoResource: the label names no resource under the rule's overrides
// and template.
var ErrNoResource = errors.New("names no resource under the rule")

// ResourceFor is the served resource a series label names under the
// rule: an override, or a label the template describes, resolved. Labels
// beginning with __ (__name__) never name a resource; a template without
// a prefix (<<.Resource>>) describes every label, so there only labels
// that resolve count.
func (r *Rule) ResourceFor(label string, res Resolver) (schema.GroupResource, error) {
	if strings.HasPrefix(label, "__") {
		return schema.GroupResource{}, ErrNoResource
	}
	candidates := r.templateResources(label)
	if gr, ok := r.overrides[label]; ok {
		candidates = []schema.GroupResource{gr}
	}
	if len(candidates) == 0 {
		return schema.GroupResource{}, ErrNoResource
	}
	var first error
	for _, gr := range candidates {
		served, err := res.Resolve(gr)
		if err == nil {
			return served, nil
		}
		if first == nil {
			first = err
		}
	}
	return schema.GroupResource{}, fmt.Errorf("label %s: %w", label, first)
}

// MapLabels maps a series' labels to the served resources they name
// (resource → label; of two labels naming one resource, the first in
// order), and says why labels the overrides name resolve to none (a label
// only a template describes is quietly no resource: with <<.Resource>>
// that is every other label).
func (r *Rule) MapLabels(labels []string, res Resolver) (byResource map[schema.GroupResource]string, unresolved []string) {
	sorted := append([]string(nil), labels...)
	sort.Strings(sorted)
	byResource = map[schema.GroupResource]string{}
	for _, l := range sorted {
		gr, err := r.ResourceFor(l, res)
		switch {
		case err == nil:
			if _, ok := byResource[gr]; !ok {
				byResource[gr] = l
			}
		case errors.Is(err, ErrNoResource):
		case r.overrides[l] != (schema.GroupResource{}):
			unresolved = append(unresolved, "resources.overrides: "+err.Error())
		}
	}
	return byResource, unresolved
}

// LabelFor is the series label that names objects of the served resource
// gr: the override that resolves to it, or the template rendered with its
// group (dots and dashes as underscores) and singular name.
func (r *Rule) LabelFor(gr schema.GroupResource, res Resolver) (string, bool) {
	var labels []string
	for label, o := range r.overrides {
		if served, err := res.Resolve(o); err == nil && served == gr {
			labels = append(labels, label)
		}
	}
	if len(labels) > 0 {
		sort.Strings(labels) // two overrides of one resource: the same one every time
		return labels[0], true
	}
	if r.template == nil {
		return "", false
	}
	var b strings.Builder
	if err := r.template.Execute(&b, struct{ Group, Resource string }{groupSanitizer.Replace(gr.Group), res.Singular(gr)}); err != nil || b.Len() == 0 {
		return "", false
	}
	return b.String(), true
}

// BuiltinMapper knows the resources rules usually name, as Kubernetes
// 1.37 serves them: for explaining a configuration without a cluster, and
// for tests.
func BuiltinMapper() apimeta.RESTMapper {
	core := schema.GroupVersion{Version: "v1"}
	apps := schema.GroupVersion{Group: "apps", Version: "v1"}
	batch := schema.GroupVersion{Group: "batch", Version: "v1"}
	networking := schema.GroupVersion{Group: "networking.k8s.io", Version: "v1"}
	m := apimeta.NewDefaultRESTMapper([]schema.GroupVersion{core, apps, batch, networking})
	for _, k := range []struct {
		gv    schema.GroupVersion
		kind  string
		scope apimeta.RESTScope
	}{
		{core, "Pod", apimeta.RESTScopeNamespace},
		{core, "Service", apimeta.RESTScopeNamespace},
		{core, "PersistentVolumeClaim", apimeta.RESTScopeNamespace},
		{core, "Namespace", apimeta.RESTScopeRoot},
		{core, "Node", apimeta.RESTScopeRoot},
		{core, "PersistentVolume", apimeta.RESTScopeRoot},
		{apps, "Deployment", apimeta.RESTScopeNamespace},
		{apps, "StatefulSet", apimeta.RESTScopeNamespace},
		{apps, "ReplicaSet", apimeta.RESTScopeNamespace},
		{apps, "DaemonSet", apimeta.RESTScopeNamespace},
		{batch, "Job", apimeta.RESTScopeNamespace},
		{batch, "CronJob", apimeta.RESTScopeNamespace},
		{networking, "Ingress", apimeta.RESTScopeNamespace},
	} {
		m.Add(k.gv.WithKind(k.kind), k.scope)
	}
	return m
}
