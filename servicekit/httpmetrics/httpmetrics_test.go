package httpmetrics_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/purchase-system/purchase-system/servicekit/httpmetrics"
)

func newServer(t *testing.T) (*httptest.Server, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	r := chi.NewRouter()
	r.Use(httpmetrics.New(reg).Middleware)
	r.Get("/users/{id}", func(w http.ResponseWriter, r *http.Request) {
		if chi.URLParam(r, "id") == "missing" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, "ok") // implicit 200
	})
	r.Post("/buy", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) })
	r.Get("/healthz", func(http.ResponseWriter, *http.Request) {})
	r.Get("/readyz", func(http.ResponseWriter, *http.Request) {})
	r.Method(http.MethodGet, "/metrics", httpmetrics.Handler(reg))
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv, reg
}

func do(t *testing.T, method, url string, header ...string) string {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestCountsByRoutePatternAndSkipsProbes(t *testing.T) {
	srv, reg := newServer(t)
	for _, id := range []string{"a", "b", "c"} {
		do(t, "GET", srv.URL+"/users/"+id)
	}
	do(t, "GET", srv.URL+"/users/missing")
	do(t, "POST", srv.URL+"/buy")
	do(t, "POST", srv.URL+"/buy")
	do(t, "GET", srv.URL+"/no/such/route")
	for range 5 {
		do(t, "GET", srv.URL+"/healthz")
		do(t, "GET", srv.URL+"/readyz")
		do(t, "GET", srv.URL+"/metrics")
	}

	want := `
# HELP flask_http_request_total Total number of HTTP requests by method, status and route.
# TYPE flask_http_request_total counter
flask_http_request_total{method="GET",path="/users/{id}",status="200"} 3
flask_http_request_total{method="GET",path="/users/{id}",status="404"} 1
flask_http_request_total{method="POST",path="/buy",status="201"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "flask_http_request_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "flask_http_request_duration_seconds"); n != 3 {
		t.Fatalf("duration histogram has %d series, want 3 (one per counter series)", n)
	}
}

func TestOpenMetricsHasCreatedSamples(t *testing.T) {
	srv, _ := newServer(t)
	do(t, "POST", srv.URL+"/buy")
	om := do(t, "GET", srv.URL+"/metrics", "Accept", "application/openmetrics-text; version=1.0.0")
	if !strings.Contains(om, `flask_http_request_created{method="POST",path="/buy",status="201"}`) {
		t.Fatalf("OpenMetrics scrape lacks flask_http_request_created:\n%s", om)
	}
	if !strings.Contains(om, `flask_http_request_total{method="POST",path="/buy",status="201"} 1`) {
		t.Fatalf("OpenMetrics scrape lacks the counter:\n%s", om)
	}
	plain := do(t, "GET", srv.URL+"/metrics")
	if !strings.Contains(plain, `flask_http_request_total{method="POST",path="/buy",status="201"} 1`) {
		t.Fatalf("text scrape lacks the counter:\n%s", plain)
	}
}

func TestExpectedSeriesExistAtZeroBeforeAnyRequest(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := httpmetrics.New(reg)
	m.Expect(http.MethodPost, "/buy", http.StatusCreated)
	want := `
# HELP flask_http_request_total Total number of HTTP requests by method, status and route.
# TYPE flask_http_request_total counter
flask_http_request_total{method="POST",path="/buy",status="201"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "flask_http_request_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "flask_http_request_duration_seconds"); n != 1 {
		t.Fatalf("duration histogram has %d series, want 1", n)
	}
}

// Requests no route matched do not count toward the rate the HPA scales
// on (a scanner's invented paths would scale the web server out), and
// invented methods do not become series of their own.
func TestUnmatchedRequestsAndInventedMethodsAreBounded(t *testing.T) {
	srv, reg := newServer(t)
	for i := range 20 {
		do(t, "GET", srv.URL+"/admin/"+strings.Repeat("x", i))
		do(t, fmt.Sprintf("BREW%d", i), srv.URL+"/buy")
	}
	do(t, "POST", srv.URL+"/buy")
	want := `
# HELP flask_http_request_total Total number of HTTP requests by method, status and route.
# TYPE flask_http_request_total counter
flask_http_request_total{method="POST",path="/buy",status="201"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "flask_http_request_total"); err != nil {
		t.Fatal(err)
	}
	wantUnmatched := `
# HELP flask_http_unmatched_request_total HTTP requests no route matched, by method and status; not part of flask_http_request_total.
# TYPE flask_http_unmatched_request_total counter
flask_http_unmatched_request_total{method="GET",status="404"} 20
flask_http_unmatched_request_total{method="other",status="405"} 20
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantUnmatched), "flask_http_unmatched_request_total"); err != nil {
		t.Fatal(err)
	}
}

func TestOnlyServesMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "purchases_stored_total", Help: "h"}))
	srv := httptest.NewServer(httpmetrics.Only(reg))
	t.Cleanup(srv.Close)
	if body := do(t, "GET", srv.URL+"/metrics"); !strings.Contains(body, "purchases_stored_total 0") {
		t.Fatalf("/metrics = %.200s", body)
	}
	resp, err := http.Get(srv.URL + "/purchases")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/purchases on the metrics listener = %d, want 404", resp.StatusCode)
	}
}
