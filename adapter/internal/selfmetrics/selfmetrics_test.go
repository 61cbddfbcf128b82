package selfmetrics_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/component-base/metrics/legacyregistry"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver/metrics"

	"github.com/purchase-system/purchase-system/adapter/internal/selfmetrics"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// The handler serves the adapter's metrics together with the API server
// library's registry, as main wires it, without duplicate families.
func TestHandlerServesBothRegistries(t *testing.T) {
	reg := prometheus.NewRegistry()
	store.NewMetrics(reg)
	if err := metrics.RegisterMetrics(legacyregistry.Register); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(selfmetrics.Handler(reg, legacyregistry.DefaultGatherer))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %.500s", resp.StatusCode, b)
	}
	for _, want := range []string{`adapter_store_lookups_total{result="hit"} 0`, "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("self-metrics lack %s", want)
		}
	}
}
