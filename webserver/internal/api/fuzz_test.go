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
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/webserver/internal/api"
)

// storedPurchases answers the replay lookup from what was published, as
// the Customer Management API would once the consumer stored it.
type storedPurchases struct{ pub *recordingPublisher }

func (s storedPurchases) UserPurchases(context.Context, string, url.Values) (json.RawMessage, error) {
	return json.RawMessage(`[]`), nil
}

func (s storedPurchases) Purchase(_ context.Context, userID, id string) (purchase.Purchase, bool, error) {
	s.pub.mu.Lock()
	defer s.pub.mu.Unlock()
	for _, p := range s.pub.published {
		if p.ID == id && p.UserID == userID {
			return p, true, nil
		}
	}
	return purchase.Purchase{}, false, nil
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
			Publisher: pub, Customers: storedPurchases{pub}, Registry: prometheus.NewRegistry(),
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
		if rec.Code != http.StatusOK || rec.Header().Get("Idempotent-Replayed") != "true" || m["id"] != p.ID {
			t.Fatalf("retry with the same key: %d %v, want 200 replaying %s", rec.Code, m, p.ID)
		}
		if len(pub.published) != 1 {
			t.Fatalf("retry published again: %d publications", len(pub.published))
		}
	})
}

// Ensures the fuzz target's seam type keeps satisfying the API's interface.
var _ api.Customers = storedPurchases{}
