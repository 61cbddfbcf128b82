// Package purchase is the contract between the web server, Kafka and the
// customer management API: what a purchase is, what makes one valid, and
// how it is encoded on the wire.
package purchase

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"reflect"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Limits of a valid purchase.
const (
	MaxIDLength = 128
	MaxPrice    = 1e9
)

// Request is what a customer sends to POST /buy.
type Request struct {
	Username string  `json:"username"`
	UserID   string  `json:"userid"`
	Price    float64 `json:"price"`
}

// Purchase is an accepted purchase: the request plus the identity and time
// the web server gave it. It is the Kafka message value and the stored row.
type Purchase struct {
	ID        string    `json:"id"`
	Username  string    `json:"username"`
	UserID    string    `json:"userid"`
	Price     float64   `json:"price"`
	Timestamp time.Time `json:"timestamp"`
}

// FieldError says which field is wrong and why. Its message is what the
// client sees.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ValidateUserID checks a user id as it appears in a request body or a URL.
func ValidateUserID(s string) error { return validateName("userid", s) }

// UserIDFromPath decodes and validates a user id taken from a URL path
// segment (as a router hands it over, still escaped).
func UserIDFromPath(segment string) (string, error) {
	id, err := url.PathUnescape(segment)
	if err != nil {
		return "", &FieldError{"userid", "is not a valid URL path segment"}
	}
	return id, ValidateUserID(id)
}

func validateName(field, s string) error {
	if s == "" {
		return &FieldError{field, "must not be empty"}
	}
	if !utf8.ValidString(s) {
		return &FieldError{field, "must be valid UTF-8"}
	}
	if n := utf8.RuneCountInString(s); n > MaxIDLength {
		return &FieldError{field, fmt.Sprintf("must be at most %d characters, got %d", MaxIDLength, n)}
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return &FieldError{field, fmt.Sprintf("must contain only printable characters, found %U", r)}
		}
	}
	return nil
}

func validatePrice(p float64) error {
	switch {
	case math.IsNaN(p) || math.IsInf(p, 0):
		return &FieldError{"price", "must be a finite number"}
	case p <= 0:
		return &FieldError{"price", "must be greater than 0"}
	case p > MaxPrice:
		return &FieldError{"price", fmt.Sprintf("must be at most %g", float64(MaxPrice))}
	}
	return nil
}

// Validate reports the first thing wrong with the request, in field order.
func (r Request) Validate() error {
	if err := validateName("username", r.Username); err != nil {
		return err
	}
	if err := validateName("userid", r.UserID); err != nil {
		return err
	}
	return validatePrice(r.Price)
}

// Validate checks a purchase read back from Kafka: the request's rules plus
// a well-formed id and a timestamp.
func (p Purchase) Validate() error {
	if err := ValidateID(p.ID); err != nil {
		return err
	}
	if p.Timestamp.IsZero() {
		return &FieldError{"timestamp", "must be set"}
	}
	// Nanoseconds since 1970 in an int64 (what stores and metrics keep)
	// cover 1677 to 2262.
	if ns := p.Timestamp.UnixNano(); !time.Unix(0, ns).Equal(p.Timestamp) {
		return &FieldError{"timestamp", "must be between the years 1678 and 2261"}
	}
	return Request{Username: p.Username, UserID: p.UserID, Price: p.Price}.Validate()
}

// ValidateID checks a purchase id. The id is the stored row's key and what
// duplicates are recognised by: only one spelling of a UUID is accepted,
// or "{…}", "urn:uuid:…" and upper case would store one purchase twice.
func ValidateID(id string) error {
	u, err := uuid.Parse(id)
	if err != nil {
		return &FieldError{"id", "must be a UUID"}
	}
	if u.String() != id {
		return &FieldError{"id", "must be a UUID in canonical form (lower case, 8-4-4-4-12 digits), e.g. " + u.String()}
	}
	return nil
}

// MaxIdempotencyKeyLength bounds the Idempotency-Key header.
const MaxIdempotencyKeyLength = 255

// idempotencyNamespace scopes the ids derived from Idempotency-Keys.
var idempotencyNamespace = uuid.MustParse("3b0e8c2a-6d1f-5e7a-9c44-1f2e3d4c5b6a")

// ValidateIdempotencyKey checks an Idempotency-Key header: 1 to 255
// visible ASCII characters.
func ValidateIdempotencyKey(k string) error {
	if k == "" || len(k) > MaxIdempotencyKeyLength {
		return &FieldError{"Idempotency-Key", fmt.Sprintf("must be 1 to %d characters", MaxIdempotencyKeyLength)}
	}
	for _, c := range k {
		if c < 0x21 || c > 0x7e {
			return &FieldError{"Idempotency-Key", "must be visible ASCII characters (a UUID, say)"}
		}
	}
	return nil
}

// IDForKey is the id of the purchase a user's Idempotency-Key stands for:
// a retry with the same key is the same purchase, and the store keeps it
// once. Keys are per user: two users' equal keys are two purchases.
func IDForKey(userID, key string) string {
	return uuid.NewSHA1(idempotencyNamespace, []byte(userID+"\x00"+key)).String()
}

// New accepts a validated request: it gets a random UUID and the current
// UTC time.
func New(r Request, now time.Time) Purchase {
	return Purchase{
		ID:        uuid.NewString(),
		Username:  r.Username,
		UserID:    r.UserID,
		Price:     r.Price,
		Timestamp: now.UTC(),
	}
}

// DecodeRequest reads one JSON request strictly: unknown fields, wrong
// types and trailing data are errors that name what is wrong. The result is
// validated.
//
// An error reading r (a body over its size limit, a client that stopped
// sending) is returned as it is, for the caller to tell apart from bad
// JSON: it is not a message for the client.
func DecodeRequest(r io.Reader) (Request, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return Request{}, err
	}
	var req Request
	if err := decodeStrict(b, &req); err != nil {
		return Request{}, err
	}
	return req, req.Validate()
}

// Decode reads a purchase from a Kafka message value, strictly, and
// validates it.
func Decode(b []byte) (Purchase, error) {
	var p Purchase
	if err := decodeStrict(b, &p); err != nil {
		return Purchase{}, err
	}
	return p, p.Validate()
}

// Encode is the wire form of a purchase.
func Encode(p Purchase) ([]byte, error) { return json.Marshal(p) }

// ErrMalformed marks input that is not the expected JSON at all (as opposed
// to JSON with a bad field value).
var ErrMalformed = errors.New("malformed JSON")

func decodeStrict(b []byte, v any) error {
	// JSON is UTF-8 (RFC 8259); encoding/json would quietly turn invalid
	// bytes into U+FFFD, storing a name the client never sent.
	if !utf8.Valid(b) {
		at := 0
		for at < len(b) {
			r, size := utf8.DecodeRune(b[at:])
			if r == utf8.RuneError && size <= 1 {
				break
			}
			at += size
		}
		return fmt.Errorf("%w: not valid UTF-8 at byte %d", ErrMalformed, at)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describeDecodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: unexpected data after the JSON object", ErrMalformed)
	}
	return nil
}

// describeDecodeError turns encoding/json's errors into messages a client
// can act on, naming the field where there is one. Errors that wrap a
// reader failure (such as a body over its size limit) are kept wrapped so
// callers can still recognise them.
func describeDecodeError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Errorf("%w: expected a JSON object, got %s", ErrMalformed, typ.Value)
		}
		if typ.Type.Kind() == reflect.Float64 && strings.HasPrefix(typ.Value, "number") {
			return &FieldError{typ.Field, "number out of range"}
		}
		return &FieldError{typ.Field, fmt.Sprintf("must be a %s, got %s", jsonKind(typ.Type.Kind()), typ.Value)}
	case errors.As(err, &syntax):
		return fmt.Errorf("%w at byte %d: %s", ErrMalformed, syntax.Offset, syntax.Error())
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: empty body", ErrMalformed)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: unexpected end of input", ErrMalformed)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &FieldError{field, "unknown field"}
	}
	return err
}

func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.Float64:
		return "number"
	case reflect.String:
		return "string"
	case reflect.Struct:
		return "JSON object"
	}
	return k.String()
}
