// Package app wires the Customer Web Server from its environment: Kafka
// publisher, Customer Management API client, HTTP API.
package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/purchase-system/purchase-system/servicekit/health"
	"github.com/purchase-system/purchase-system/servicekit/kafkaenv"
	"github.com/purchase-system/purchase-system/servicekit/lifecycle"
	"github.com/purchase-system/purchase-system/servicekit/logging"
	"github.com/purchase-system/purchase-system/servicekit/retry"
	"github.com/purchase-system/purchase-system/webserver/internal/api"
	"github.com/purchase-system/purchase-system/webserver/internal/customers"
	"github.com/purchase-system/purchase-system/webserver/internal/publisher"
)

// Config is everything the web server reads from its environment.
type Config struct {
	HTTPAddr              string        // HTTP_ADDR, default :8080
	CustomerManagementURL string        // CUSTOMER_MANAGEMENT_URL, default http://localhost:8081
	PublishTimeout        time.Duration // PUBLISH_TIMEOUT, default 5s
	ShutdownDelay         time.Duration // SHUTDOWN_DELAY, default 0 (see lifecycle.Server)
	LogLevel              string        // LOG_LEVEL
	Kafka                 kafkaenv.Settings
}

// ConfigFromEnv reads the configuration, failing on values it cannot use.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		HTTPAddr:              or(getenv("HTTP_ADDR"), ":8080"),
		CustomerManagementURL: or(getenv("CUSTOMER_MANAGEMENT_URL"), "http://localhost:8081"),
		PublishTimeout:        5 * time.Second,
		LogLevel:              getenv("LOG_LEVEL"),
	}
	if v := getenv("PUBLISH_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return Config{}, fmt.Errorf("PUBLISH_TIMEOUT: %q is not a positive duration such as 5s", v)
		}
		c.PublishTimeout = d
	}
	var err error
	if c.ShutdownDelay, err = lifecycle.ShutdownDelayFromEnv(getenv); err != nil {
		return Config{}, err
	}
	c.Kafka, err = kafkaenv.FromEnv(getenv)
	return c, err
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// App is a running web server without its listener, so tests can serve
// its Handler however they like.
type App struct {
	Handler   http.Handler
	publisher *publisher.Publisher
	cancel    context.CancelFunc
}

// New connects to Kafka and builds the API. Topic creation is retried in
// the background: the server starts (not ready) while Kafka is down.
func New(ctx context.Context, c Config, logger *slog.Logger, readiness ...health.Check) (*App, error) {
	pub, err := publisher.New(c.Kafka, c.PublishTimeout, logger)
	if err != nil {
		return nil, err
	}
	cust, err := customers.New(c.CustomerManagementURL, 5*time.Second)
	if err != nil {
		pub.Close()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	bg, cancel := context.WithCancel(ctx)
	go func() {
		_ = retry.Do(bg, topicBackoff, logger, "ensuring Kafka topic", func() error { return pub.EnsureTopics(bg) })
	}()
	return &App{
		Handler:   api.NewServer(api.Deps{Publisher: pub, Customers: cust, Registry: reg, Logger: logger, Readiness: readiness}),
		publisher: pub,
		cancel:    cancel,
	}, nil
}

// topicBackoff paces topic creation while Kafka is away at start.
var topicBackoff = retry.Backoff{First: time.Second, Max: 30 * time.Second}

// Close flushes the producer: every message already handed to Kafka is
// delivered or reported failed before it returns.
func (a *App) Close() {
	a.cancel()
	a.publisher.Close()
}

// Run is the web server's main: it serves until ctx ends (SIGTERM), then
// drains in-flight requests and flushes the producer.
func Run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	c, err := ConfigFromEnv(getenv)
	if err != nil {
		return err
	}
	logger := logging.New(stdout, "webserver", c.LogLevel)
	c.Kafka.Logs = kafkaenv.NewLogChannel(logger, "client")
	ln, err := lifecycle.Listen(c.HTTPAddr)
	if err != nil {
		return err
	}
	srv := &lifecycle.Server{Timeouts: lifecycle.DefaultTimeouts, ShutdownDelay: c.ShutdownDelay}
	a, err := New(ctx, c, logger, health.Check{Name: "shutdown", Check: srv.Draining})
	if err != nil {
		ln.Close()
		return err
	}
	defer a.Close()
	logger.Info("starting", "kafka", c.Kafka.BootstrapServers, "topic", c.Kafka.Topic,
		"customer_management_url", c.CustomerManagementURL)
	return srv.Serve(ctx, ln, a.Handler, logger)
}
