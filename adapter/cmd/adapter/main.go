// Command adapter serves custom.metrics.k8s.io (per-pod rates from
// Prometheus, by prometheus-adapter-style rules) and external.metrics.k8s.io
// (Kafka consumer group lag, computed from the brokers) to the HPA.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"k8s.io/client-go/metadata"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/metrics/legacyregistry"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver/metrics"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/dynamicmapper"

	"github.com/purchase-system/purchase-system/adapter/internal/configwatch"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/promsource"
	"github.com/purchase-system/purchase-system/adapter/internal/provider"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
	"github.com/purchase-system/purchase-system/servicekit/logging"
)

// Adapter is the API server with this project's flags beside the
// library's (secure serving, delegated auth, --lister-kubeconfig, ...).
type Adapter struct {
	basecmd.AdapterBase

	ConfigFile        string
	PrometheusURL     string
	PrometheusTimeout time.Duration
	RelistInterval    time.Duration
	KafkaBootstrap    string
	KafkaExtraConfig  string
	MaxSampleAge      time.Duration
	RefreshInterval   time.Duration
	DemandTTL         time.Duration
	LagRateWindow     time.Duration
	LagSecondsCap     float64
	SelfMetricsAddr   string
	LogLevel          string
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()
	a := &Adapter{}
	a.Name = "purchase-metrics-adapter"
	f := a.Flags()
	f.StringVar(&a.ConfigFile, "config", "/etc/adapter/config.yaml", "rules file (prometheus-adapter format); reloaded when it changes")
	f.StringVar(&a.PrometheusURL, "prometheus-url", "http://prometheus.monitoring.svc:9090", "Prometheus to query")
	f.DurationVar(&a.PrometheusTimeout, "prometheus-timeout", 10*time.Second, "timeout of one Prometheus query")
	f.DurationVar(&a.RelistInterval, "metrics-relist-interval", time.Minute, "how often to rediscover which metrics the rules yield")
	f.StringVar(&a.KafkaBootstrap, "kafka-bootstrap-servers", "", "Kafka brokers for consumer group lag; empty disables the lag metrics")
	f.StringVar(&a.KafkaExtraConfig, "kafka-extra-config", "", "librdkafka properties k=v,k=v (security settings)")
	f.DurationVar(&a.MaxSampleAge, "max-sample-age", 2*time.Minute, "samples older than this are not served")
	f.DurationVar(&a.RefreshInterval, "refresh-interval", 5*time.Second, "how long a fetched value is served; wanted values are refreshed this often")
	f.DurationVar(&a.DemandTTL, "demand-ttl", 10*time.Minute, "values nobody asked for this long are dropped")
	f.DurationVar(&a.LagRateWindow, "lag-rate-window", 2*time.Minute, "window of the consumption rate behind kafka_consumergroup_lag_seconds")
	f.Float64Var(&a.LagSecondsCap, "lag-seconds-cap", 3600, "kafka_consumergroup_lag_seconds of a stalled group with lag")
	f.StringVar(&a.SelfMetricsAddr, "self-metrics-addr", ":9102", "plain-HTTP address of the adapter's own /metrics (no credentials needed)")
	f.StringVar(&a.LogLevel, "log-level", "info", "debug, info, warn or error")
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
	cfg, err := configwatch.Load(a.ConfigFile)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	for _, w := range cfg.Warnings {
		logger.Warn(w)
	}
	m := selfmetrics.New()
	m.ConfigLastReloadSuccess.Set(1)
	prom, err := promsource.New(a.PrometheusURL, a.PrometheusTimeout, m)
	if err != nil {
		return err
	}
	var kafkaSource *lag.Source
	if a.KafkaBootstrap != "" {
		kcfg, err := kafkaConfig(a.KafkaBootstrap, a.KafkaExtraConfig)
		if err != nil {
			return err
		}
		if kafkaSource, err = lag.NewSource(kcfg, m); err != nil {
			return err
		}
		defer kafkaSource.Close()
		kafkaSource.RateWindow, kafkaSource.DrainCap = a.LagRateWindow, a.LagSecondsCap
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
	p := provider.New(cfg, prom, kafkaSource, mapper, meta, ctx.Done(), m, logger, provider.Options{
		MaxSampleAge: a.MaxSampleAge,
		Store:        store.Options{Fresh: a.RefreshInterval, DemandTTL: a.DemandTTL, FetchTimeout: a.PrometheusTimeout},
	})
	go p.Run(ctx, a.RelistInterval, nil)
	if err := configwatch.Watch(ctx, a.ConfigFile, m, logger, func(c *rules.Config) { p.SetConfig(ctx, c) }); err != nil {
		return fmt.Errorf("watching %s: %w", a.ConfigFile, err)
	}
	a.WithCustomMetrics(p)
	a.WithExternalMetrics(p)
	if err := metrics.RegisterMetrics(legacyregistry.Register); err != nil {
		return err
	}
	go serveSelfMetrics(ctx, a.SelfMetricsAddr, m, logger)
	logger.Info("starting", "prometheus", a.PrometheusURL, "kafka", a.KafkaBootstrap, "rules", len(cfg.Rules), "external_rules", len(cfg.ExternalRules))
	return a.Run(ctx)
}

func kafkaConfig(bootstrap, extra string) (kafka.ConfigMap, error) {
	cfg := kafka.ConfigMap{"bootstrap.servers": bootstrap}
	for _, kv := range strings.Split(extra, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--kafka-extra-config: %q is not key=value", kv)
		}
		cfg[k] = v
	}
	return cfg, nil
}

func serveSelfMetrics(ctx context.Context, addr string, m *selfmetrics.Metrics, logger *slog.Logger) {
	srv := &http.Server{Addr: addr, Handler: m.Handler(legacyregistry.DefaultGatherer), ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("self-metrics server", "addr", addr, "err", err)
	}
}
