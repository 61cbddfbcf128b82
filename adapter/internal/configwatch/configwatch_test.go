package configwatch_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/adapter/internal/configwatch"
	"github.com/purchase-system/purchase-system/adapter/internal/rules"
)

const ruleA = `
rules:
  - seriesQuery: 'a_total{pod!=""}'
    resources: {overrides: {pod: {resource: pod}}}
    metricsQuery: 'rate(<<.Series>>[1m])'
`

const ruleB = `
rules:
  - seriesQuery: 'b_total{pod!=""}'
    resources: {overrides: {pod: {resource: pod}}}
    metricsQuery: 'rate(<<.Series>>[1m])'
`

// metric reads one sample of the registry: name with label=value, or the
// unlabelled one.
func metric(t *testing.T, reg *prometheus.Registry, name string, labelValue ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(labelValue) == 0 || (len(m.GetLabel()) > 0 && m.GetLabel()[0].GetValue() == labelValue[0]) {
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s%v", name, labelValue)
	return 0
}

// watch loads path as the adapter does at start, then watches it.
func watch(t *testing.T, path string) (chan *rules.Config, *prometheus.Registry) {
	t.Helper()
	_, inUse, err := configwatch.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return watchFrom(t, path, inUse)
}

func watchFrom(t *testing.T, path string, inUse []byte) (chan *rules.Config, *prometheus.Registry) {
	t.Helper()
	got := make(chan *rules.Config, 10)
	reg := prometheus.NewRegistry()
	m := configwatch.NewMetrics(reg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := configwatch.Watch(ctx, path, inUse, m, slog.New(slog.NewTextHandler(io.Discard, nil)), func(c *rules.Config) { got <- c }); err != nil {
		t.Fatal(err)
	}
	return got, reg
}

func wait(t *testing.T, got chan *rules.Config) *rules.Config {
	t.Helper()
	select {
	case c := <-got:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no reload within 5 s")
		return nil
	}
}

func TestReloadsAnEditedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(ruleA), 0o644); err != nil {
		t.Fatal(err)
	}
	got, m := watch(t, path)
	if err := os.WriteFile(path, []byte(ruleB), 0o644); err != nil {
		t.Fatal(err)
	}
	c := wait(t, got)
	if len(c.Rules) != 1 || c.Rules[0].SeriesQuery != `b_total{pod!=""}` {
		t.Fatalf("reloaded %+v", c.Rules)
	}
	if v := metric(t, m, "adapter_config_reloads_total", "success"); v != 1 {
		t.Fatalf("success reloads = %v", v)
	}
}

// A mounted ConfigMap changes by an atomic swap of the ..data symlink; the
// file path itself never sees a write.
func TestReloadsAConfigMapStyleSwap(t *testing.T) {
	dir := t.TempDir()
	write := func(version, content string) {
		d := filepath.Join(dir, "..v"+version)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "config.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink("..v"+version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("1", ruleA)
	path := filepath.Join(dir, "config.yaml")
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), path); err != nil {
		t.Fatal(err)
	}
	got, _ := watch(t, path)
	write("2", ruleB)
	if c := wait(t, got); c.Rules[0].SeriesQuery != `b_total{pod!=""}` {
		t.Fatalf("reloaded %+v", c.Rules[0])
	}
}

func TestABrokenEditKeepsTheRulesInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(ruleA), 0o644); err != nil {
		t.Fatal(err)
	}
	got, m := watch(t, path)
	if err := os.WriteFile(path, []byte("rules:\n  - seriesQuery: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	select {
	case c := <-got:
		t.Fatalf("a file that does not parse was applied: %+v", c)
	default:
	}
	if v := metric(t, m, "adapter_config_reloads_total", "error"); v != 1 {
		t.Fatalf("error reloads = %v, want 1", v)
	}
	if v := metric(t, m, "adapter_config_last_reload_successful"); v != 0 {
		t.Fatalf("last reload successful = %v, want 0", v)
	}
	// Fixing the file reloads it.
	if err := os.WriteFile(path, []byte(ruleB), 0o644); err != nil {
		t.Fatal(err)
	}
	wait(t, got)
}

// The file changes between the adapter reading it at start and the watch
// starting: the change is applied, not missed.
func TestAChangeBeforeTheWatchStartsIsApplied(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(ruleA), 0o644); err != nil {
		t.Fatal(err)
	}
	_, inUse, err := configwatch.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(ruleB), 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ := watchFrom(t, path, inUse)
	if c := wait(t, got); c.Rules[0].SeriesQuery != `b_total{pod!=""}` {
		t.Fatalf("applied %+v, want rule b", c.Rules[0])
	}
}

// A broken edit reverted to the rules in use: the file on disk is what
// runs again, and the gauge says so.
func TestRevertingABrokenEditIsSuccessAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(ruleA), 0o644); err != nil {
		t.Fatal(err)
	}
	got, m := watch(t, path)
	if err := os.WriteFile(path, []byte("rules: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if v := metric(t, m, "adapter_config_last_reload_successful"); v != 0 {
		t.Fatalf("after a broken edit: %v, want 0", v)
	}
	if err := os.WriteFile(path, []byte(ruleA), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if v := metric(t, m, "adapter_config_last_reload_successful"); v != 1 {
		t.Fatalf("after reverting to the rules in use: %v, want 1", v)
	}
	select {
	case c := <-got:
		t.Fatalf("the rules in use were applied again: %+v", c)
	default:
	}
}
