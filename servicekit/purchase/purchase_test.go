package purchase_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

func TestDecodeRequest(t *testing.T) {
	long := strings.Repeat("a", 128)
	tests := []struct {
		name, body string
		want       purchase.Request
		wantErr    string // substring; "" means valid
		malformed  bool
	}{
		{name: "valid", body: `{"username":"test","userid":"loadtest","price":10}`, want: purchase.Request{"test", "loadtest", 10}},
		{name: "fractional price", body: `{"username":"a","userid":"b","price":0.01}`, want: purchase.Request{"a", "b", 0.01}},
		{name: "max price", body: `{"username":"a","userid":"b","price":1e9}`, want: purchase.Request{"a", "b", 1e9}},
		{name: "128 characters", body: `{"username":"` + long + `","userid":"b","price":1}`, want: purchase.Request{long, "b", 1}},
		{name: "128 multibyte characters", body: `{"username":"` + strings.Repeat("é", 128) + `","userid":"b","price":1}`, want: purchase.Request{strings.Repeat("é", 128), "b", 1}},
		{name: "field order free", body: `{"price":2,"userid":"b","username":"a"}`, want: purchase.Request{"a", "b", 2}},

		{name: "missing username", body: `{"userid":"b","price":1}`, wantErr: "username: must not be empty"},
		{name: "empty userid", body: `{"username":"a","userid":"","price":1}`, wantErr: "userid: must not be empty"},
		{name: "null userid", body: `{"username":"a","userid":null,"price":1}`, wantErr: "userid: must not be empty"},
		{name: "129 characters", body: `{"username":"` + long + `a","userid":"b","price":1}`, wantErr: "username: must be at most 128 characters, got 129"},
		{name: "control character", body: `{"username":"a\u0007","userid":"b","price":1}`, wantErr: "username: must contain only printable characters, found U+0007"},
		{name: "newline in userid", body: `{"username":"a","userid":"b\nc","price":1}`, wantErr: "userid: must contain only printable characters"},
		{name: "missing price", body: `{"username":"a","userid":"b"}`, wantErr: "price: must be greater than 0"},
		{name: "zero price", body: `{"username":"a","userid":"b","price":0}`, wantErr: "price: must be greater than 0"},
		{name: "negative price", body: `{"username":"a","userid":"b","price":-5}`, wantErr: "price: must be greater than 0"},
		{name: "price too high", body: `{"username":"a","userid":"b","price":1000000000.5}`, wantErr: "price: must be at most 1e+09"},
		{name: "price overflows float64", body: `{"username":"a","userid":"b","price":1e400}`, wantErr: "price: number out of range"},
		{name: "price as string", body: `{"username":"a","userid":"b","price":"10"}`, wantErr: "price: must be a number, got string"},
		{name: "username as number", body: `{"username":1,"userid":"b","price":1}`, wantErr: "username: must be a string, got number"},
		{name: "unknown field", body: `{"username":"a","userid":"b","price":1,"coupon":"x"}`, wantErr: "coupon: unknown field"},
		{name: "array", body: `[1,2]`, wantErr: "expected a JSON object", malformed: true},
		{name: "syntax error", body: `{"username":"a",`, wantErr: "malformed JSON", malformed: true},
		{name: "empty body", body: ``, wantErr: "malformed JSON: empty body", malformed: true},
		{name: "invalid UTF-8", body: "{\"username\":\"a\xff\",\"userid\":\"b\",\"price\":1}", wantErr: "not valid UTF-8 at byte 14", malformed: true},
		{name: "two objects", body: `{"username":"a","userid":"b","price":1}{}`, wantErr: "unexpected data after the JSON object", malformed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := purchase.DecodeRequest(strings.NewReader(tt.body))
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("DecodeRequest = %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			if errors.Is(err, purchase.ErrMalformed) != tt.malformed {
				t.Fatalf("errors.Is(err, ErrMalformed) = %v, want %v", !tt.malformed, tt.malformed)
			}
		})
	}
}

func TestRequestValidateRejectsNonFinitePrices(t *testing.T) {
	for _, p := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		err := purchase.Request{Username: "a", UserID: "b", Price: p}.Validate()
		if err == nil || err.Error() != "price: must be a finite number" {
			t.Errorf("price %v: err = %v", p, err)
		}
	}
}

func TestNewAndDecodeRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.FixedZone("CET", 3600))
	p := purchase.New(purchase.Request{Username: "a", UserID: "b", Price: 9.99}, now)
	if p.Timestamp.Location() != time.UTC || !p.Timestamp.Equal(now) {
		t.Fatalf("timestamp %v is not now in UTC", p.Timestamp)
	}
	b, err := purchase.Encode(p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := purchase.Decode(b)
	if err != nil || got != p {
		t.Fatalf("Decode(Encode(p)) = %+v, %v; want %+v", got, err, p)
	}
	if q := purchase.New(purchase.Request{Username: "a", UserID: "b", Price: 1}, now); q.ID == p.ID {
		t.Fatal("two purchases got the same id")
	}
}

func TestDecodeRejectsWhatTheWebServerWouldNotProduce(t *testing.T) {
	for name, msg := range map[string]string{
		"not JSON":      `hello`,
		"no id":         `{"username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		"bad id":        `{"id":"x","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		"no timestamp":  `{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1}`,
		"invalid price": `{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":0,"timestamp":"2026-01-01T00:00:00Z"}`,
		"extra field":   `{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z","x":1}`,
		// Other spellings of one UUID would store one purchase twice.
		"upper-case id": `{"id":"6F1C1A57-3F4E-4A57-9A43-2B0D6C1E0A11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		"braced id":     `{"id":"{6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11}","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		"urn id":        `{"id":"urn:uuid:6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		"undashed id":   `{"id":"6f1c1a573f4e4a579a432b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		"year 9999":     `{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"9999-01-01T00:00:00Z"}`,
		"year 1":        `{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"0001-01-02T00:00:00Z"}`,
	} {
		if _, err := purchase.Decode([]byte(msg)); err == nil {
			t.Errorf("%s: Decode accepted %s", name, msg)
		}
	}
}

// FuzzDecodeRequest checks that any input either decodes to a request that
// passes validation and survives a round trip, or is rejected with a
// message; it never panics.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"username":"test","userid":"loadtest","price":10}`,
		`{"username":"","userid":"b","price":1}`,
		`{"username":"a","userid":"b","price":1e400}`,
		`{"username":"a","userid":"b","price":1,"x":{}}`,
		`{"username":"\u00e9","userid":"\ud800","price":0.5}`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := purchase.DecodeRequest(strings.NewReader(body))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("rejection without a message")
			}
			return
		}
		if verr := req.Validate(); verr != nil {
			t.Fatalf("decoded request fails validation: %v", verr)
		}
		if !utf8.ValidString(req.Username) || !utf8.ValidString(req.UserID) {
			t.Fatalf("accepted invalid UTF-8: %+v", req)
		}
		p := purchase.New(req, time.Now())
		b, err := purchase.Encode(p)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		back, err := purchase.Decode(b)
		if err != nil || back.Username != req.Username || back.UserID != req.UserID || back.Price != req.Price {
			t.Fatalf("round trip of %+v: %+v, %v", req, back, err)
		}
	})
}

// FuzzDecode is the consumer's side: whatever arrives on the topic is
// either rejected with a message or is a valid purchase whose id has one
// spelling (the store's key) and whose wire form is stable, so a message
// read twice is the same row.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		`{"id":"6F1C1A57-3F4E-4A57-9A43-2B0D6C1E0A11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00Z"}`,
		`{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"2026-01-01T00:00:00.123456789+05:30"}`,
		`{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"a","userid":"b","price":1,"timestamp":"9999-12-31T23:59:59Z"}`,
		`{"id":"6f1c1a57-3f4e-4a57-9a43-2b0d6c1e0a11","username":"\u00e9\ud83d\ude00","userid":"b","price":5e-324,"timestamp":"2026-01-01T00:00:00Z"}`,
		`{"id":"","username":"a","userid":"b","price":1,"timestamp":""}`,
		`{}`, `null`, `"x"`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		p, err := purchase.Decode(msg)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("rejection without a message")
			}
			return
		}
		if verr := p.Validate(); verr != nil {
			t.Fatalf("decoded purchase fails validation: %v", verr)
		}
		if purchase.ValidateID(p.ID) != nil {
			t.Fatalf("accepted a non-canonical id %q", p.ID)
		}
		wire, err := purchase.Encode(p)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		back, err := purchase.Decode(wire)
		if err != nil {
			t.Fatalf("re-decoding our own encoding of %+v: %v", p, err)
		}
		if back.ID != p.ID || back.Username != p.Username || back.UserID != p.UserID ||
			back.Price != p.Price || !back.Timestamp.Equal(p.Timestamp) {
			t.Fatalf("round trip changed the purchase: %+v → %+v", p, back)
		}
		again, _ := purchase.Encode(back)
		if string(again) != string(wire) {
			t.Fatalf("wire form not stable: %s then %s", wire, again)
		}
	})
}
