package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/purchase-system/purchase-system/adapter/internal/configwatch"
	"github.com/purchase-system/purchase-system/adapter/internal/explain"
	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

const explainUsage = `adapter explain: what the rules yield and why, and how one request is answered.

  adapter explain --config rules.yaml --prometheus-url URL
      every rule: the series it matched, what filters and name.matches did,
      which labels map to which resources, what it yields, or why nothing
  adapter explain ... --namespace NS --resource pods --metric NAME [--selector SEL | --name POD] [--metric-selector SEL]
      one custom metric request: PromQL, series per object, sums, sample ages, the HPA's answer
  adapter explain ... --namespace NS --metric NAME --metric-selector SEL
      one external metric request (Kafka lag: per-partition offsets and the case that applied)

Without --kubeconfig a label selector cannot be resolved: every object
Prometheus has a value for is shown. Flags:
`

// explainMain runs `adapter explain` and returns the exit code.
func explainMain(args []string, stdout, stderr io.Writer) int {
	f := pflag.NewFlagSet("explain", pflag.ContinueOnError)
	f.SetOutput(stderr)
	f.Usage = func() { fmt.Fprint(stderr, explainUsage); f.PrintDefaults() }
	var s Settings
	s.addFlags(f)
	var req explain.Request
	var kubeconfig string
	f.StringVar(&req.Namespace, "namespace", "", "namespace of the request")
	f.StringVar(&req.Resource, "resource", "", "resource of a custom metric request (pods, namespaces, …); empty: an external metric")
	f.StringVar(&req.Metric, "metric", "", "the metric asked for; empty: explain the rules")
	f.StringVar(&req.Name, "name", "", "one object's name")
	f.StringVar(&req.Selector, "selector", "", "label selector of the objects (needs --kubeconfig)")
	f.StringVar(&req.MetricSelector, "metric-selector", "", "the HPA's metric selector")
	f.StringVar(&kubeconfig, "kubeconfig", "", "cluster to resolve label selectors and resources in (optional)")
	if err := f.Parse(args); err != nil {
		return 2
	}
	if err := runExplain(s, req, kubeconfig, stdout); err != nil {
		fmt.Fprintln(stderr, "adapter explain:", err)
		return 1
	}
	return 0
}

func runExplain(s Settings, req explain.Request, kubeconfig string, w io.Writer) error {
	cfg, _, err := configwatch.Load(s.ConfigFile)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	for _, warning := range cfg.Warnings {
		fmt.Fprintln(w, "warning:", warning)
	}
	var mapper apimeta.RESTMapper = rules.BuiltinMapper()
	var meta metadata.Interface
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return fmt.Errorf("--kubeconfig: %w", err)
		}
		dc, err := discovery.NewDiscoveryClientForConfig(rc)
		if err != nil {
			return fmt.Errorf("--kubeconfig: %w", err)
		}
		groups, err := restmapper.GetAPIGroupResources(dc)
		if err != nil {
			return fmt.Errorf("--kubeconfig: discovering resources: %w", err)
		}
		mapper = restmapper.NewDiscoveryRESTMapper(groups)
		if meta, err = metadata.NewForConfig(rc); err != nil {
			return fmt.Errorf("--kubeconfig: %w", err)
		}
	}
	p, err := s.build(cfg, mapper, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p.catalog.Discover(ctx)
	stop := make(chan struct{})
	defer close(stop)
	st := store.New(p.router, store.Options{})
	api := metricsapi.New(p.catalog, st, mapper, meta, stop, metricsapi.Options{MaxSampleAge: s.MaxSampleAge, LagEnabled: p.kafka != nil, LagAccess: p.lagAccess})
	ex := &explain.Explainer{Catalog: p.catalog, Prom: p.prom, Kafka: p.kafka, API: api, Cluster: meta != nil}
	if req.Metric == "" {
		fmt.Fprintf(w, "rules of %s against Prometheus at %s\n\n", s.ConfigFile, s.Prometheus.URL)
		ex.Rules(w)
		return nil
	}
	return ex.Explain(ctx, w, req)
}
