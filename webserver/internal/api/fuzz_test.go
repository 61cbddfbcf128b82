package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/webserver/internal/api"
)

// claims decides each key's purchase once, as the Customer Management API
// does for every web server replica.
type claims struct {
	mu sync.Mutex
	by map[string]purchase.Purchase
}

func (c *claims) UserPurchases(context.Context, string, url.Values) (json.RawMessage, error) {
	return json.RawMessage(`[]`), nil
}

func (c *claims) Claim(_ context.Context, key string, p purchase.Purchase) (purchase.Purchase, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.by == nil {
		c.by = map[string]purchase.Purchase{}
	}
	k := p.UserID + "\x00" + key
	if got, ok := c.by[k]; ok {
		return got, nil
	}
	c.by[k] = p
	return p, nil
}

// FuzzBuy drives POST /buy with any body, Content-Type and Idempotency-Key.
// With Kafka and the management API answering, every request ends in a
// 2xx that published exactly what the answer says, or a 4xx that names
// what is wrong and published nothing; never a 5xx or a panic. A request
// repeated with its key is the same purchase, published once.
func FuzzBuy(f *testing.F) {
	for _, s := range []struct{ body, contentType, key string }{
		{`{"username":"test","userid":"loadtest","price":10}`, "application/json", ""},
		{`{"username":"test","userid":"loadtest","price":10}`, "application/json; charset=utf-8", "6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11"},
		{`{"username":"test","userid":"loadtest","price":10}`, "text/plain", ""},
		{`{"username":"test","userid":"loadtest","price":10}`, "application/json", "key with space"},
		{`{"username":"a","userid":"b","price":1e999}`, "application/json", ""},
		{`{"username":"\u0000","userid":"b","price":1}`, "application/json", "k"},
		{`{"username":"a","userid":"b","price":-0}`, "application/json", ""},
		{`{"username":"a","userid":"b","price":1,"price":2}`, "application/json", ""},
		{`{"username":"` + strings.Repeat("x", 200) + `","userid":"b","price":1}`, "application/json", ""},
		{"\xff\xfe", "application/json", "\xff"},
		{`[]`, "application/json;;", ""},
	} {
		f.Add(s.body, s.contentType, s.key)
	}
	f.Fuzz(func(t *testing.T, body, contentType, key string) {
		pub := &recordingPublisher{}
		h := api.NewServer(api.Deps{
			Publisher: pub, Customers: &claims{}, Registry: prometheus.NewRegistry(),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		do := func() (*httptest.ResponseRecorder, map[string]any) {
			req := httptest.NewRequest(http.MethodPost, "/buy", strings.NewReader(body))
			req.Header.Set("Content-Type", contentType)
			if key != "" {
				req.Header.Set(api.IdempotencyKeyHeader, key)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var m map[string]any
			if err := json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&m); err != nil {
				t.Fatalf("%d answer is not a JSON object: %q", rec.Code, rec.Body.Bytes())
			}
			return rec, m
		}
		rec, m := do()
		switch {
		case rec.Code >= 500:
			t.Fatalf("%d for a request the server could judge: %v", rec.Code, m)
		case rec.Code >= 400:
			if msg, _ := m["error"].(string); msg == "" {
				t.Fatalf("%d without an error message: %v", rec.Code, m)
			}
			if len(pub.published) != 0 {
				t.Fatalf("%d, yet published %+v", rec.Code, pub.published)
			}
			return
		case rec.Code != http.StatusCreated:
			t.Fatalf("first attempt answered %d %v, want 201 or a 4xx", rec.Code, m)
		}
		if len(pub.published) != 1 {
			t.Fatalf("201 after %d publications", len(pub.published))
		}
		p := pub.published[0]
		if err := p.Validate(); err != nil {
			t.Fatalf("published an invalid purchase %+v: %v", p, err)
		}
		if m["id"] != p.ID || m["userid"] != p.UserID || m["username"] != p.Username || m["price"] != p.Price {
			t.Fatalf("201 body %v is not the published purchase %+v", m, p)
		}
		if key == "" {
			return
		}
		if p.ID != purchase.IDForKey(p.UserID, key) {
			t.Fatalf("keyed purchase got id %s, want the one derived from the key", p.ID)
		}
		rec, m = do()
		if rec.Code != http.StatusOK || rec.Header().Get("Idempotent-Replayed") != "true" || m["id"] != p.ID || m["timestamp"] != p.Timestamp.Format(time.RFC3339Nano) {
			t.Fatalf("retry with the same key: %d %v, want 200 replaying %s of %s", rec.Code, m, p.ID, p.Timestamp.Format(time.RFC3339Nano))
		}
		// Published again (its first publication may have failed): the
		// same purchase, which the store keeps once.
		if len(pub.published) != 2 || pub.published[1] != p {
			t.Fatalf("retry published %+v, want the first purchase again", pub.published)
		}
	})
}

// Ensures the fuzz target's seam type keeps satisfying the API's interface.
var _ api.Customers = &claims{}
