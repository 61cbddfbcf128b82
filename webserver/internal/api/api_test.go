package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/webserver/internal/api"
	"github.com/purchase-system/purchase-system/webserver/internal/customers"
	"github.com/purchase-system/purchase-system/webserver/internal/publisher"
)

// recordingPublisher stands in for Kafka at the API's seam: it records
// what was published and fails when told to. The Kafka path itself is
// covered by the e2e pipeline tests.
type recordingPublisher struct {
	mu        sync.Mutex
	published []purchase.Purchase
	err       error
}

func (p *recordingPublisher) Publish(_ context.Context, pu purchase.Purchase) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.published = append(p.published, pu)
	return nil
}

func (p *recordingPublisher) Ready(context.Context) error { return p.err }

func newServer(t *testing.T, pub api.Publisher, customerURL string) *httptest.Server {
	t.Helper()
	c, err := customers.New(customerURL, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.NewServer(api.Deps{
		Publisher: pub, Customers: c, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:    func() time.Time { return time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC) },
	}))
	t.Cleanup(srv.Close)
	return srv
}

func post(t *testing.T, url, contentType, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("response is not a JSON object: %q", b)
	}
	return resp.StatusCode, m
}

func TestBuyRejectsBadInputWithA4xxThatSaysWhy(t *testing.T) {
	pub := &recordingPublisher{}
	srv := newServer(t, pub, "http://127.0.0.1:1")
	valid := `{"username":"test","userid":"loadtest","price":10}`
	tests := []struct {
		name, contentType, body string
		status                  int
		errContains             string
	}{
		{"no content type", "", valid, 415, "Content-Type must be application/json, got none"},
		{"form content type", "application/x-www-form-urlencoded", valid, 415, "got application/x-www-form-urlencoded"},
		{"text plain", "text/plain", valid, 415, "Content-Type must be application/json"},
		{"body over 64 KiB", "application/json", `{"username":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "larger than 64 KiB"},
		{"unknown field", "application/json", `{"username":"a","userid":"b","price":1,"admin":true}`, 400, "admin: unknown field"},
		{"bad price", "application/json", `{"username":"a","userid":"b","price":0}`, 400, "price: must be greater than 0"},
		{"not JSON", "application/json", `username=a`, 400, "malformed JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := post(t, srv.URL+"/buy", tt.contentType, tt.body)
			if status != tt.status || !strings.Contains(body["error"].(string), tt.errContains) {
				t.Fatalf("= %d %v, want %d with error containing %q", status, body, tt.status, tt.errContains)
			}
		})
	}
	if len(pub.published) != 0 {
		t.Fatalf("rejected requests were published: %+v", pub.published)
	}
}

func TestBuyAnswers201WithThePublishedPurchase(t *testing.T) {
	pub := &recordingPublisher{}
	srv := newServer(t, pub, "http://127.0.0.1:1")
	status, body := post(t, srv.URL+"/buy", "application/json; charset=utf-8", `{"username":"test","userid":"u1","price":10}`)
	if status != 201 {
		t.Fatalf("status %d %v", status, body)
	}
	if len(pub.published) != 1 {
		t.Fatalf("published %d purchases, want 1", len(pub.published))
	}
	p := pub.published[0]
	if body["id"] != p.ID || body["timestamp"] != "2026-11-27T12:00:00Z" || body["userid"] != "u1" || body["price"] != 10.0 {
		t.Fatalf("201 body %v does not match the published purchase %+v", body, p)
	}
}

func TestBuyAnswers503WhenKafkaDoesNotAcknowledge(t *testing.T) {
	pub := &recordingPublisher{err: errors.Join(publisher.ErrUnavailable, errors.New("not acknowledged within 5s: kafka-0.kafka.data.svc:9092/1: Connection refused"))}
	srv := newServer(t, pub, "http://127.0.0.1:1")
	status, body := post(t, srv.URL+"/buy", "application/json", `{"username":"test","userid":"u1","price":10}`)
	if status != 503 || !strings.Contains(body["error"].(string), "Kafka did not take it in time") || body["request_id"] == "" {
		t.Fatalf("= %d %v, want 503 saying why, with a request id", status, body)
	}
	// The broker's address is the operator's business, not the caller's:
	// logged under the request id, not answered.
	if strings.Contains(fmt.Sprint(body), "kafka-0") || strings.Contains(fmt.Sprint(body), "9092") {
		t.Fatalf("the answer leaks the broker: %v", body)
	}
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("/readyz = %v %v, want 503", resp.StatusCode, err)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestGetAllUserBuys(t *testing.T) {
	var gotPath, gotQuery string
	cm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotQuery = r.URL.EscapedPath(), r.URL.RawQuery
		if r.URL.Query().Get("limit") == "0" {
			w.WriteHeader(400)
			io.WriteString(w, `{"error":"limit: must be an integer from 1 to 10000, got \"0\""}`)
			return
		}
		io.WriteString(w, `[{"id":"x","username":"a","userid":"a b/c","price":1,"timestamp":"2026-01-01T00:00:00Z"}]`)
	}))
	defer cm.Close()
	srv := newServer(t, &recordingPublisher{}, cm.URL)

	status, body := get(t, srv.URL+"/getAllUserBuys/a%20b%2Fc?limit=5")
	if status != 200 || !strings.Contains(body, `"userid":"a b/c"`) {
		t.Fatalf("= %d %s", status, body)
	}
	if gotPath != "/purchases/a%20b%2Fc" || gotQuery != "limit=5" {
		t.Fatalf("asked the API for %s?%s, want the escaped user id and the limit passed on", gotPath, gotQuery)
	}
	if status, body := get(t, srv.URL+"/getAllUserBuys/x?limit=0"); status != 400 || !strings.Contains(body, "limit") {
		t.Fatalf("API 400 not passed on: %d %s", status, body)
	}
	long := strings.Repeat("u", 129)
	if status, body := get(t, srv.URL+"/getAllUserBuys/"+long); status != 400 || !strings.Contains(body, "userid: must be at most 128") {
		t.Fatalf("long user id: %d %s", status, body)
	}

	cm.Close() // the Customer Management API goes away
	status, body = get(t, srv.URL+"/getAllUserBuys/u1")
	if status != 502 || !strings.Contains(body, "Customer Management API is unavailable") || !strings.Contains(body, "request_id") {
		t.Fatalf("API down: %d %s, want 502 naming the API", status, body)
	}
	if strings.Contains(body, "127.0.0.1") {
		t.Fatalf("the answer leaks the API's address: %s", body)
	}
}

// An idle web server already exports its request counters at 0: the
// adapter can list flask_http_request_per_second and serve 0 before the
// first purchase, and the first burst is an increase Prometheus can see.
func TestRequestCountersExistBeforeTheFirstRequest(t *testing.T) {
	srv := newServer(t, &recordingPublisher{}, "http://127.0.0.1:1")
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`flask_http_request_total{method="POST",path="/buy",status="201"} 0`,
		`flask_http_request_total{method="GET",path="/getAllUserBuys/{userid}",status="200"} 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s:\n%s", want, b)
		}
	}
}
