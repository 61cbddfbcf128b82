// Package configwatch reloads the rules file when it changes on disk —
// including the way the kubelet updates a mounted ConfigMap (an atomic swap
// of a ..data symlink in the file's directory), which a watch on the file
// itself would miss.
package configwatch

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

// Metrics are the reload metrics.
type Metrics struct {
	reloads     *prometheus.CounterVec
	lastSuccess prometheus.Gauge
}

// NewMetrics creates the reload metrics, the file in use counted as a
// success, and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "adapter_config_reloads_total", Help: "Rule file reloads, by result.",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "adapter_config_last_reload_successful", Help: "1 if the rules file on disk is the one in use; 0 if its last change did not parse or could not be read.",
		}),
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("error")
	m.lastSuccess.Set(1)
	if reg != nil {
		reg.MustRegister(m.reloads, m.lastSuccess)
	}
	return m
}

// Load reads and parses the rules file, and returns the bytes it parsed:
// what Watch must compare later changes with.
func Load(path string) (*rules.Config, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := rules.Parse(filepath.Base(path), b)
	return cfg, b, err
}

// Watch calls apply with the new rules each time the file changes and
// parses. inUse is the content the rules in use were parsed from (Load's):
// a change made between Load and Watch is applied, not missed. A file that
// does not parse is logged (with its line and reason) and counted, and the
// rules in use stay.
func Watch(ctx context.Context, path string, inUse []byte, m *Metrics, logger *slog.Logger, apply func(*rules.Config)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return err
	}
	last, seen := inUse, inUse // in use; last looked at
	// Anything written between Load and the watch starting is checked at
	// once.
	debounce := time.After(0)
	go func() {
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				name := filepath.Base(ev.Name)
				if name == filepath.Base(path) || name == "..data" {
					// Editors and the kubelet touch the file several
					// times per update: act once it settles.
					debounce = time.After(300 * time.Millisecond)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				logger.Warn("watching the rules file", "err", err)
			case <-debounce:
				b, err := os.ReadFile(path)
				if err != nil {
					logger.Error("reading the rules file", "path", path, "err", err)
					m.reloads.WithLabelValues("error").Inc()
					m.lastSuccess.Set(0)
					continue
				}
				if string(b) == string(seen) {
					continue // looked at already (several events for one write)
				}
				seen = b
				if string(b) == string(last) {
					// Back to the rules in use (a broken edit reverted):
					// the file on disk is what runs again.
					m.lastSuccess.Set(1)
					continue
				}
				if len(bytes.TrimSpace(b)) == 0 {
					// A writer between truncating and writing, most
					// likely; an empty file would drop every rule. To
					// serve no rules, write "rules: []".
					logger.Warn("rules file is empty; keeping the rules in use", "path", path)
					m.lastSuccess.Set(0)
					seen = nil
					continue
				}
				cfg, err := rules.Parse(filepath.Base(path), b)
				if err != nil {
					logger.Error("rules file changed but does not parse; keeping the rules in use", "err", err)
					m.reloads.WithLabelValues("error").Inc()
					m.lastSuccess.Set(0)
					continue
				}
				last = b
				for _, w := range cfg.Warnings {
					logger.Warn(w)
				}
				logger.Info("rules reloaded", "rules", len(cfg.Rules), "external_rules", len(cfg.ExternalRules))
				m.reloads.WithLabelValues("success").Inc()
				m.lastSuccess.Set(1)
				apply(cfg)
			}
		}
	}()
	return nil
}
