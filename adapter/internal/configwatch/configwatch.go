// Package configwatch reloads the rules file when it changes on disk —
// including the way the kubelet updates a mounted ConfigMap (an atomic swap
// of a ..data symlink in the file's directory), which a watch on the file
// itself would miss.
package configwatch

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/purchase-system/purchase-system/adapter/internal/rules"
	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
)

// Load reads and parses the rules file.
func Load(path string) (*rules.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return rules.Parse(filepath.Base(path), b)
}

// Watch calls apply with the new rules each time the file changes and
// parses. A file that does not parse is logged (with its line and reason)
// and counted, and the rules in use stay.
func Watch(ctx context.Context, path string, m *selfmetrics.Metrics, logger *slog.Logger, apply func(*rules.Config)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		w.Close()
		return err
	}
	// What is in use now, read before watching starts so no edit is missed.
	last, _ := os.ReadFile(path)
	go func() {
		defer w.Close()
		var debounce <-chan time.Time
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
					m.ConfigReloads.WithLabelValues("error").Inc()
					m.ConfigLastReloadSuccess.Set(0)
					continue
				}
				if string(b) == string(last) {
					continue
				}
				cfg, err := rules.Parse(filepath.Base(path), b)
				if err != nil {
					logger.Error("rules file changed but does not parse; keeping the rules in use", "err", err)
					m.ConfigReloads.WithLabelValues("error").Inc()
					m.ConfigLastReloadSuccess.Set(0)
					continue
				}
				last = b
				for _, w := range cfg.Warnings {
					logger.Warn(w)
				}
				logger.Info("rules reloaded", "rules", len(cfg.Rules), "external_rules", len(cfg.ExternalRules))
				m.ConfigReloads.WithLabelValues("success").Inc()
				m.ConfigLastReloadSuccess.Set(1)
				apply(cfg)
			}
		}
	}()
	return nil
}
