// Command adapter serves custom.metrics.k8s.io (per-pod rates from
// Prometheus, by prometheus-adapter-style rules) and external.metrics.k8s.io
// (Kafka consumer group lag, computed from the brokers) to the HPA.
//
//	adapter [flags]            serve (the API server library's flags too)
//	adapter explain [flags]    explain the rules and one request, offline
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/metadata"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/metrics/legacyregistry"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver/metrics"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/dynamicmapper"

	"github.com/purchase-system/purchase-system/adapter/internal/backend"
	"github.com/purchase-system/purchase-system/adapter/internal/catalog"
	"github.com/purchase-system/purchase-system/adapter/internal/configwatch"
	"github.com/purchase-system/purchase-system/adapter/internal/explain"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/metricsapi"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/readiness"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
	"github.com/purchase-system/purchase-system/adapter/internal/sources"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
	"github.com/purchase-system/purchase-system/adapter/internal/teamrules"
	"github.com/purchase-system/purchase-system/adapter/internal/upstream"
	"github.com/purchase-system/purchase-system/servicekit/logging"
)

// Adapter is the API server with this project's flags beside the
// library's (secure serving, delegated auth, --lister-kubeconfig, ...).
type Adapter struct {
	basecmd.AdapterBase
	Settings
	RefreshInterval time.Duration
	DemandTTL       time.Duration
	MaxQueries      int
	MaxQueriesPerNS int
	NamespaceFloor  int
	MaxInFlight     int
	MaxInFlightNS   int
	SelfMetricsAddr string
	DebugAddr       string
	UpstreamCert    string
	TeamRules       bool
	UpstreamKey     string
	// UpstreamsFile holds upstreams beside the config's (--upstreams-file).
	UpstreamsFile string
	LogLevel      string
}

// Settings are the flags serving and explaining share: the rules, how to
// reach Prometheus and Kafka, what is served.
type Settings struct {
	ConfigFile       string
	Prometheus       promsource.ClientOptions
	RelistInterval   time.Duration
	RuleStaleAfter   time.Duration
	KafkaBootstrap   string
	KafkaExtraConfig string
	KafkaConfigFile  string
	MaxSampleAge     time.Duration
	LagRateWindow    time.Duration
	LagSecondsCap    float64
}

func (s *Settings) addFlags(f *pflag.FlagSet) {
	f.StringVar(&s.ConfigFile, "config", "/etc/adapter/config.yaml", "rules file (prometheus-adapter format); reloaded when it changes")
	p := &s.Prometheus
	f.StringVar(&p.URL, "prometheus-url", "http://prometheus.monitoring.svc:9090", "Prometheus (or Thanos, Cortex, Mimir) to query")
	f.DurationVar(&p.Timeout, "prometheus-timeout", 10*time.Second, "timeout of one Prometheus query")
	f.BoolVar(&p.AuthInCluster, "prometheus-auth-incluster", false, "authenticate to Prometheus with the pod's service account token and cluster CA")
	f.StringVar(&p.AuthConfig, "prometheus-auth-config", "", "kubeconfig file whose credentials authenticate to Prometheus")
	f.StringVar(&p.CAFile, "prometheus-ca-file", "", "CA certificate to verify Prometheus' serving certificate")
	f.StringVar(&p.ClientCertFile, "prometheus-client-tls-cert-file", "", "client certificate for Prometheus (re-read when renewed)")
	f.StringVar(&p.ClientKeyFile, "prometheus-client-tls-key-file", "", "client certificate's key")
	f.StringVar(&p.TokenFile, "prometheus-token-file", "", "bearer token for Prometheus (re-read when the file changes)")
	f.StringArrayVar(&p.Headers, "prometheus-header", nil, "header sent to Prometheus, Name=value (repeatable), e.g. X-Scope-OrgID=tenant")
	f.StringVar(&p.Verb, "prometheus-verb", "POST", "HTTP verb of queries: GET or POST")
	f.BoolVar(&p.DisableHTTP2, "disable-http2", false, "talk HTTP/1.1 to Prometheus")
	f.DurationVar(&s.RelistInterval, "metrics-relist-interval", time.Minute, "how often to rediscover which metrics the rules yield")
	f.DurationVar(&s.RuleStaleAfter, "rule-stale-after", 10*time.Minute, "a rule whose discovery fails serves what it last found this long; then its metrics answer 503 naming the rule and its error (never 404 while the rule exists)")
	f.StringVar(&s.KafkaBootstrap, "kafka-bootstrap-servers", "", "Kafka brokers for consumer group lag; empty disables the lag metrics")
	f.StringVar(&s.KafkaExtraConfig, "kafka-extra-config", "", "Kafka client settings by their librdkafka names, k=v,k=v: security.protocol, sasl.mechanism, sasl.username, ssl.ca.location, ssl.certificate.location, ssl.key.location, ssl.endpoint.identification.algorithm, client.id, socket.connection.setup.timeout.ms (no secrets: those go in --kafka-config-file)")
	f.StringVar(&s.KafkaConfigFile, "kafka-config-file", "", "file of Kafka client settings, key=value a line (librdkafka's names, sasl.password included; for example a mounted Secret): overrides --kafka-extra-config, re-read when it changes (a new SASL password applies to new connections at once)")
	f.DurationVar(&s.MaxSampleAge, "max-sample-age", 2*time.Minute, "samples older than this are not served")
	// prometheus-adapter's name: its users' Deployments keep working.
	f.DurationVar(&s.MaxSampleAge, "metrics-max-age", 2*time.Minute, "another name for --max-sample-age (prometheus-adapter's flag)")
	f.DurationVar(&s.LagRateWindow, "lag-rate-window", 2*time.Minute, "window of the consumption rate behind kafka_consumergroup_lag_seconds")
	f.Float64Var(&s.LagSecondsCap, "lag-seconds-cap", 3600, "kafka_consumergroup_lag_seconds of a stalled group with lag")
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "explain" {
		os.Exit(explainMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "migrate-keda" {
		os.Exit(migrateMain(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	logs.InitLogs()
	defer logs.FlushLogs()
	a := &Adapter{}
	a.Name = "purchase-metrics-adapter"
	f := a.Flags()
	a.addFlags(f)
	f.DurationVar(&a.RefreshInterval, "refresh-interval", 5*time.Second, "how long a fetched value is served; wanted values are refreshed this often")
	f.DurationVar(&a.DemandTTL, "demand-ttl", 10*time.Minute, "values nobody asked for this long are dropped")
	f.IntVar(&a.MaxQueries, "max-store-queries", 5000, "distinct metric queries kept and refreshed; more are refused (429)")
	f.IntVar(&a.MaxQueriesPerNS, "max-store-queries-per-namespace", 250, "distinct metric queries one namespace may have kept: one namespace cannot fill the store")
	f.IntVar(&a.NamespaceFloor, "store-queries-floor", 20, "distinct metric queries every namespace may add even when --max-store-queries are kept")
	f.IntVar(&a.MaxInFlight, "max-fetches-in-flight", 16, "backend fetches running at once")
	f.IntVar(&a.MaxInFlightNS, "max-fetches-in-flight-per-namespace", 0, "backend fetches of one namespace's queries running at once (default a quarter of --max-fetches-in-flight)")
	f.StringVar(&a.SelfMetricsAddr, "self-metrics-addr", ":9102", "plain-HTTP address of the adapter's own /metrics (no credentials needed)")
	f.StringVar(&a.DebugAddr, "debug-addr", "", "loopback address of the explain endpoint (e.g. 127.0.0.1:6060; reach it with kubectl port-forward); off when empty")
	f.StringVar(&a.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&a.UpstreamCert, "upstream-client-cert-file", "", "client certificate the adapter presents to its upstreams (the config's upstreams) as a front proxy: each upstream trusts its CA as a requestheader CA and reads the caller from X-Remote-User/-Group/-Extra-*")
	f.StringVar(&a.UpstreamKey, "upstream-client-key-file", "", "its key")
	f.StringVar(&a.UpstreamsFile, "upstreams-file", "", "file with an upstreams section only, added to the config's (read at start): a kustomize component or a ConfigMap of its own names upstreams without rewriting the rules file")
	f.BoolVar(&a.TeamRules, "team-rules", true, "serve the MetricsRule objects teams create in their namespaces (adapter.purchase-system.dev; watched once its CRD is installed)")
	logs.AddFlags(f)
	if err := f.Parse(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "adapter:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "adapter:", err)
		os.Exit(1)
	}
}

func (a *Adapter) run(ctx context.Context) error {
	logger := logging.New(os.Stdout, "adapter", a.LogLevel)
	if a.DebugAddr != "" {
		if err := loopbackOnly(a.DebugAddr); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	cfg, inUse, err := configwatch.Load(a.ConfigFile)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	for _, w := range cfg.Warnings {
		logger.Warn(w)
	}
	mapper, err := a.RESTMapper()
	if err != nil {
		return err
	}
	// The library builds a regenerating mapper but never starts it.
	if rm, ok := mapper.(*dynamicmapper.RegeneratingDiscoveryRESTMapper); ok {
		go rm.RunUntil(ctx.Done())
	}
	clientCfg, err := a.ClientConfig()
	if err != nil {
		return err
	}
	meta, err := metadata.NewForConfig(clientCfg)
	if err != nil {
		return err
	}

	// Sources → store → API.
	parts, err := a.build(cfg, mapper, reg, logger)
	if err != nil {
		return err
	}
	defer parts.close()
	st := store.New(parts.router, store.Options{Fresh: a.RefreshInterval, DemandTTL: a.DemandTTL, FetchTimeout: a.Prometheus.Timeout,
		MaxQueries: a.MaxQueries, MaxPerNamespace: a.MaxQueriesPerNS, NamespaceFloor: a.NamespaceFloor,
		MaxInFlight: a.MaxInFlight, MaxInFlightPerNamespace: a.MaxInFlightNS, Metrics: store.NewMetrics(reg)})
	specs, err := a.upstreamSpecs(cfg)
	if err != nil {
		return err
	}
	ups, err := a.upstreams(specs, parts.backend, reg, logger)
	if err != nil {
		return err
	}
	api := metricsapi.New(parts.catalog, st, mapper, meta, ctx.Done(), metricsapi.Options{
		MaxSampleAge: a.MaxSampleAge, LagEnabled: parts.kafka != nil, LagAccess: parts.lagAccess,
		Upstreams: ups, Metrics: metricsapi.NewMetrics(reg), Logger: logger})
	go ups.Run(ctx, a.RelistInterval, parts.catalog)
	if a.TeamRules {
		dyn, err := dynamic.NewForConfig(clientCfg)
		if err != nil {
			return err
		}
		disc, err := discovery.NewDiscoveryClientForConfig(clientCfg)
		if err != nil {
			return err
		}
		go teamrules.New(dyn, disc, parts.catalog, logger).Run(ctx)
	}
	go st.Run(ctx)
	go parts.catalog.Run(ctx, a.RelistInterval)
	if parts.kafka != nil && a.KafkaConfigFile != "" {
		go parts.kafka.FollowPropertiesFile(ctx, a.KafkaConfigFile, parts.kafkaBase, 5*time.Second, logger)
	}
	err = configwatch.Watch(ctx, a.ConfigFile, inUse, configwatch.NewMetrics(reg), logger, func(c *rules.Config) {
		parts.catalog.SetConfig(ctx, c)
		st.Reset() // values fetched under the old rules may mean something else
		if !reflect.DeepEqual(c.Upstreams, cfg.Upstreams) {
			logger.Warn("the upstreams in the config changed: they apply at the next start (the rules changed now)")
		}
		ups.CheckConflicts(parts.catalog)
	})
	if err != nil {
		return fmt.Errorf("watching %s: %w", a.ConfigFile, err)
	}

	a.WithCustomMetrics(api)
	a.WithExternalMetrics(api)
	server, err := a.Server()
	if err != nil {
		return err
	}
	// Ready means some source has metrics to serve, not merely that the
	// server listens; one source's outage does not take the other's
	// metrics out of the Service (the probe excludes the per-source checks,
	// which /readyz?verbose shows).
	srcs := []readiness.Source{{Name: "prometheus", Serving: parts.catalog.Serving, Reachable: parts.catalog.Reachable}}
	if parts.kafka != nil {
		srcs = append(srcs, readiness.Source{Name: "kafka", Serving: parts.kafka.Ready, Reachable: parts.kafka.Reachable})
	}
	if err := server.GenericAPIServer.AddReadyzChecks(readiness.Checks(srcs...)...); err != nil {
		return err
	}
	if err := metrics.RegisterMetrics(legacyregistry.Register); err != nil {
		return err
	}
	go serve(ctx, "self-metrics", a.SelfMetricsAddr, selfmetrics.Handler(reg, legacyregistry.DefaultGatherer), logger)
	if a.DebugAddr != "" {
		ex := &explain.Explainer{Catalog: parts.catalog, Prom: parts.prom, Kafka: parts.kafka, API: api, Store: st, Cluster: true}
		go serve(ctx, "explain endpoint", a.DebugAddr, explain.Handler(ex), logger)
	}
	logger.Info("starting", "prometheus", a.Prometheus.URL, "kafka", a.KafkaBootstrap, "rules", len(cfg.Rules), "external_rules", len(cfg.ExternalRules))
	return a.Run(ctx)
}

// upstreamSpecs are the config's upstreams and --upstreams-file's.
func (a *Adapter) upstreamSpecs(cfg *rules.Config) ([]upstream.Spec, error) {
	if a.UpstreamsFile == "" {
		return cfg.Upstreams, nil
	}
	b, err := os.ReadFile(a.UpstreamsFile)
	if err != nil {
		return nil, fmt.Errorf("--upstreams-file: %w", err)
	}
	extra, err := rules.ParseUpstreams(filepath.Base(a.UpstreamsFile), b)
	if err != nil {
		return nil, fmt.Errorf("--upstreams-file: %w", err)
	}
	return rules.MergeUpstreams(a.ConfigFile, cfg.Upstreams, a.UpstreamsFile, extra)
}

// upstreams builds the providers the upstreams sections name.
func (a *Adapter) upstreams(specs []upstream.Spec, bm *backend.Metrics, reg prometheus.Registerer, logger *slog.Logger) (*upstream.Set, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	var ups []*upstream.Upstream
	for _, spec := range specs {
		u, err := upstream.New(spec, upstream.Options{ClientCertFile: a.UpstreamCert, ClientKeyFile: a.UpstreamKey,
			Timeout: a.Prometheus.Timeout, Backend: bm, Logger: logger})
		if err != nil {
			return nil, err
		}
		ups = append(ups, u)
	}
	return upstream.NewSet(ups, reg, logger), nil
}

// parts are the sources and the catalog, shared by serving and explaining.
type parts struct {
	prom  *promsource.Source
	kafka *lag.Source // nil without --kafka-bootstrap-servers
	// kafkaBase are the Kafka settings of the flags, under the file's.
	kafkaBase map[string]string
	router    *sources.Router
	catalog   *catalog.Catalog
	backend   *backend.Metrics
}

// lagAccess applies the rules file's kafkaLag.access (reloaded with it).
func (p *parts) lagAccess(namespace string, q lag.Query) (lag.Query, error) {
	access := p.catalog.Rules().KafkaLag
	if err := access.Allow(namespace, q.Groups, q.Topics); err != nil {
		return q, err
	}
	// Checked when the file was loaded.
	q.Partitions, _ = lag.ParsePartitionSet(access.PartitionLimitation(namespace, q.Groups, q.Topics))
	return q, nil
}

func (p *parts) close() {
	if p.kafka != nil {
		p.kafka.Close()
	}
}

func (s *Settings) build(cfg *rules.Config, mapper apimeta.RESTMapper, reg prometheus.Registerer, logger *slog.Logger) (*parts, error) {
	bm := backend.NewMetrics(reg)
	prom, err := promsource.New(s.Prometheus, bm)
	if err != nil {
		return nil, err
	}
	prom.Resolver = rules.MapperResolver(mapper)
	p := &parts{prom: prom, backend: bm}
	var extra []string
	if s.KafkaBootstrap != "" {
		props, err := lag.ParseProperties(s.KafkaExtraConfig)
		if err != nil {
			return nil, err
		}
		p.kafkaBase = maps.Clone(props)
		if s.KafkaConfigFile != "" {
			file, err := lag.ReadPropertiesFile(s.KafkaConfigFile)
			if err != nil {
				return nil, err
			}
			props = lag.Merge(props, file)
		}
		props["bootstrap.servers"] = s.KafkaBootstrap
		p.kafkaBase["bootstrap.servers"] = s.KafkaBootstrap
		if p.kafka, err = lag.NewSource(props, bm, lag.NewMetrics(reg), lag.Logger(logger)); err != nil {
			return nil, err
		}
		p.kafka.RateWindow, p.kafka.DrainCap = s.LagRateWindow, s.LagSecondsCap
		extra = []string{lag.MetricLag, lag.MetricLagSeconds}
	}
	p.router = &sources.Router{Prometheus: prom, Kafka: p.kafka}
	p.catalog = catalog.New(cfg, prom, mapper, catalog.Options{Extra: extra, StaleAfter: s.RuleStaleAfter, Metrics: catalog.NewMetrics(reg), Logger: logger})
	return p, nil
}

// loopbackOnly refuses a debug address other processes could reach: the
// explain endpoint shows label values, which are data.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--debug-addr %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--debug-addr %q: the explain endpoint listens on a loopback address only (e.g. 127.0.0.1:6060); reach it with kubectl port-forward", addr)
	}
	return nil
}

func serve(ctx context.Context, what, addr string, h http.Handler, logger *slog.Logger) {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error(what+" server", "addr", addr, "err", err)
	}
}
