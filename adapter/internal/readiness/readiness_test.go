package readiness

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/apiserver/pkg/server/healthz"
)

func source(name string, serving, reachable error) Source {
	return Source{Name: name, Serving: func() error { return serving }, Reachable: func() error { return reachable }}
}

// readyz serves the checks as the API server library does and returns the
// status and body of a request to path.
func readyz(t *testing.T, path string, checks []healthz.HealthChecker) (int, string) {
	t.Helper()
	mux := http.NewServeMux()
	healthz.InstallReadyzHandler(mux, checks...)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

// A Prometheus outage (or a restart during it, when the catalog never
// loaded) leaves the adapter Ready while Kafka serves lag, and the other
// way round; /readyz?verbose names the failing source; the probe's path
// stays 200; with both away the adapter is not Ready and says why.
func TestOneSourceDownKeepsTheOtherServed(t *testing.T) {
	down := errors.New("connection refused")
	for _, c := range []struct {
		name       string
		prom, kafk Source
		ready      bool
		failing    string
	}{
		{"prometheus away after a restart", source("prometheus", errors.New("metric discovery has not run yet"), down), source("kafka", nil, nil), true, "prometheus"},
		{"kafka away", source("prometheus", nil, nil), source("kafka", errors.New("not answered yet"), down), true, "kafka"},
		{"both away", source("prometheus", errors.New("never discovered"), down), source("kafka", errors.New("not answered"), down), false, "prometheus"},
	} {
		t.Run(c.name, func(t *testing.T) {
			checks := Checks(c.prom, c.kafk)
			probe := "/readyz?" + ExcludeQuery(c.prom, c.kafk)
			code, body := readyz(t, probe, checks)
			if (code == 200) != c.ready {
				t.Fatalf("%s = %d %s, want ready=%v", probe, code, body, c.ready)
			}
			code, body = readyz(t, "/readyz?verbose", checks)
			if code == 200 || !strings.Contains(body, "[-]"+c.failing+" failed") {
				t.Fatalf("/readyz?verbose = %d\n%s\nwant the failing source %s named", code, body, c.failing)
			}
		})
	}
}

func TestServingNamesEachSourcesReason(t *testing.T) {
	err := Serving(source("prometheus", errors.New("p down"), nil), source("kafka", errors.New("k down"), nil))
	if err == nil || !strings.Contains(err.Error(), "prometheus: p down") || !strings.Contains(err.Error(), "kafka: k down") {
		t.Fatalf("Serving = %v", err)
	}
	if err := Serving(source("prometheus", errors.New("p down"), nil), source("kafka", nil, nil)); err != nil {
		t.Fatalf("one source serving: %v", err)
	}
}
