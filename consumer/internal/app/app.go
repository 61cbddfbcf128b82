// Package app wires the Customer Management API from its environment:
// store, Kafka ingest pipeline, HTTP API. ROLE splits the two halves for
// a system whose consumers scale to zero (components/scale-to-zero): the
// API (reads and Idempotency-Keys) must answer while no consumer runs.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/purchase-system/purchase-system/consumer/internal/api"
	"github.com/purchase-system/purchase-system/consumer/internal/ingest"
	"github.com/purchase-system/purchase-system/consumer/internal/store"
	"github.com/purchase-system/purchase-system/servicekit/health"
	"github.com/purchase-system/purchase-system/servicekit/httpjson"
	"github.com/purchase-system/purchase-system/servicekit/httpmetrics"
	"github.com/purchase-system/purchase-system/servicekit/kafkaenv"
	"github.com/purchase-system/purchase-system/servicekit/lifecycle"
	"github.com/purchase-system/purchase-system/servicekit/logging"
	"github.com/purchase-system/purchase-system/servicekit/retry"
)

// Config is everything the consumer reads from its environment.
type Config struct {
	HTTPAddr string // HTTP_ADDR, default :8081
	// MetricsAddr is METRICS_ADDR: when set, /metrics is also served on a
	// listener of its own (the manifests' NetworkPolicy lets Prometheus
	// reach that port only, not the API).
	MetricsAddr string
	DatabaseURL string // DATABASE_URL; empty means the embedded SQLite file
	LogLevel    string // LOG_LEVEL
	Batch       ingest.Options
	Kafka       kafkaenv.Settings
	// ShutdownDelay is SHUTDOWN_DELAY, default 0 (see lifecycle.Server).
	ShutdownDelay time.Duration
	// KeyRetention is IDEMPOTENCY_KEY_RETENTION, default 24h: how long an
	// Idempotency-Key stands for its purchase.
	KeyRetention time.Duration
	// Role is ROLE: what this process does (RoleAll by default).
	Role Role
}

// Role is which half of the Customer Management API a process runs.
type Role string

const (
	// RoleAll consumes purchases from Kafka, stores them and serves the
	// API: one Deployment does everything.
	RoleAll Role = "all"
	// RoleAPI serves reads and Idempotency-Keys from the database and
	// consumes nothing: it needs no consumer running, so it can answer
	// while the consumers are scaled to zero.
	RoleAPI Role = "api"
	// RoleIngest consumes and stores, and serves only /healthz, /readyz
	// and /metrics: the workers that scale on lag, down to zero.
	RoleIngest Role = "ingest"
)

func (r Role) serves() bool  { return r != RoleIngest }
func (r Role) ingests() bool { return r != RoleAPI }

// ConfigFromEnv reads the configuration, failing on values it cannot use.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		HTTPAddr:    getenv("HTTP_ADDR"),
		MetricsAddr: getenv("METRICS_ADDR"),
		DatabaseURL: getenv("DATABASE_URL"),
		LogLevel:    getenv("LOG_LEVEL"),
		Batch:       ingest.DefaultOptions,
		Role:        Role(getenv("ROLE")),
	}
	switch c.Role {
	case "":
		c.Role = RoleAll
	case RoleAll, RoleAPI, RoleIngest:
	default:
		return Config{}, fmt.Errorf("ROLE: %q is none of all (consume and serve), api (serve reads and Idempotency-Keys) and ingest (consume only)", c.Role)
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8081"
	}
	if v := getenv("BATCH_SIZE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxBatch*10 {
			return Config{}, fmt.Errorf("BATCH_SIZE: %q is not a count from 1 to %d", v, store.MaxBatch*10)
		}
		c.Batch.BatchSize = n
	}
	c.KeyRetention = store.ClaimRetention
	if v := getenv("IDEMPOTENCY_KEY_RETENTION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			return Config{}, fmt.Errorf("IDEMPOTENCY_KEY_RETENTION: %q is not a duration of a minute or more, such as 24h", v)
		}
		c.KeyRetention = d
	}
	if v := getenv("BATCH_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Config{}, fmt.Errorf("BATCH_WAIT: %q is not a positive duration such as 20ms", v)
		}
		c.Batch.BatchWait = d
	}
	// A URL that can never work fails the start; an unreachable database
	// is waited for.
	if err := store.CheckURL(c.DatabaseURL); err != nil {
		return Config{}, err
	}
	var err error
	if c.ShutdownDelay, err = lifecycle.ShutdownDelayFromEnv(getenv); err != nil {
		return Config{}, err
	}
	c.Kafka, err = kafkaenv.FromEnv(getenv)
	return c, err
}

// Run is the consumer's main: it ingests and serves until ctx ends
// (SIGTERM), then drains HTTP, stores and commits what it holds, and exits.
func Run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	c, err := ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	logger := logging.New(stdout, "consumer", c.LogLevel)
	c.Kafka.Logs = kafkaenv.NewLogChannel(logger, "client")

	ln, err := lifecycle.Listen(c.HTTPAddr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metricsErr := make(chan error, 1)
	if c.MetricsAddr == "" {
		metricsErr <- nil
	} else {
		mln, err := lifecycle.Listen(c.MetricsAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("METRICS_ADDR: %w", err)
		}
		go func() { metricsErr <- lifecycle.Serve(ctx, mln, httpmetrics.Only(reg), logger); cancel() }()
	}
	// Serving starts before the database answers: a pod whose database
	// is away (restarting, failing over) stays alive and unready and
	// starts the moment it is back, instead of crash-looping into
	// Kubernetes' growing restart back-off.
	handler := &startingHandler{}
	serveErr := make(chan error, 1)
	srv := &lifecycle.Server{Timeouts: lifecycle.DefaultTimeouts, ShutdownDelay: c.ShutdownDelay}
	go func() { serveErr <- srv.Serve(ctx, ln, handler, logger); cancel() }()

	var st *store.Store
	err = retry.Do(ctx, retry.Backoff{First: 500 * time.Millisecond, Max: 10 * time.Second}, logger,
		"opening the database", func() (err error) { st, err = store.Open(ctx, c.DatabaseURL); return err })
	if err != nil { // stopped before the database answered
		return errors.Join(<-serveErr, <-metricsErr)
	}
	defer st.Close()
	st.KeyRetention = c.KeyRetention
	logger.Info("store ready", "role", string(c.Role), "backend", st.Dialect(), "idempotencyKeyRetention", c.KeyRetention.String())
	deps := api.Deps{
		Registry:  reg,
		Logger:    logger,
		Readiness: []health.Check{{Name: "shutdown", Check: srv.Draining}, {Name: "database", Check: st.Ping}},
	}
	if c.Role.serves() {
		deps.Store = st
		go expireClaims(ctx, st, c.KeyRetention, logger)
	}
	if !c.Role.ingests() {
		handler.ready(api.NewServer(deps))
		<-ctx.Done()
		return errors.Join(<-serveErr, <-metricsErr)
	}

	in, err := ingest.New(c.Kafka, st, ingest.NewMetrics(reg), c.Batch, logger)
	if err != nil {
		cancel()
		return errors.Join(err, <-serveErr, <-metricsErr)
	}
	deps.Readiness = append(deps.Readiness, health.Check{Name: "kafka", Check: in.Ready})
	handler.ready(api.NewServer(deps))

	go func() {
		_ = retry.Do(ctx, retry.Backoff{First: time.Second, Max: 30 * time.Second}, logger,
			"ensuring Kafka topics", func() error { return in.EnsureTopics(ctx) })
	}()

	// Either half failing stops the other; both finish their drain.
	ingestErr := in.Run(ctx)
	cancel()
	return errors.Join(ingestErr, <-serveErr, <-metricsErr)
}

// startingHandler answers while the database is not open yet: alive
// (/healthz), not ready, every other request a 503 that says why. Then it
// hands over to the API.
type startingHandler struct{ api atomic.Pointer[http.Handler] }

func (h *startingHandler) ready(api http.Handler) { h.api.Store(&api) }

func (h *startingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if api := h.api.Load(); api != nil {
		(*api).ServeHTTP(w, r)
		return
	}
	if r.URL.Path == "/healthz" {
		health.Healthz()(w, r)
		return
	}
	httpjson.Error(w, http.StatusServiceUnavailable, "starting: waiting for the database")
}

// expireClaims deletes the Idempotency-Keys past their retention, a few
// times per retention (an expired key is also claimed anew on its next
// use: this only keeps the table small).
func expireClaims(ctx context.Context, st *store.Store, retention time.Duration, logger *slog.Logger) {
	tick := time.NewTicker(min(retention/4, time.Hour))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if n, err := st.ExpireClaims(ctx); err != nil {
			logger.Warn("expiring idempotency keys", "err", err)
		} else if n > 0 {
			logger.Info("expired idempotency keys", "count", n, "retention", retention.String())
		}
	}
}
