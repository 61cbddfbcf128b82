// Package httpjson writes JSON responses and the one error shape both
// services use: {"error": "<what is wrong>", "request_id": "<id>"}. Errors
// of a dependency (Kafka, the database, the other service) are logged in
// full under the request's id and answered with a short message: their
// text names hosts, users and addresses that callers of a public port must
// not see.
package httpjson

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
)

// Write sends v as JSON with the given status.
func Write(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		// The status line is already out; all that is left is to say so.
		slog.Debug("writing JSON response failed", "err", err)
	}
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error     string `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}

// Error sends {"error": msg} with the given status: for the caller's own
// mistakes, whose message says what to fix.
func Error(w http.ResponseWriter, status int, msg string) {
	Write(w, status, ErrorBody{Error: msg, RequestID: w.Header().Get(RequestIDHeader)})
}

// Fail answers a failure that is not the caller's: err is logged with the
// request's id, the caller gets msg and the id to quote.
func Fail(w http.ResponseWriter, r *http.Request, logger *slog.Logger, status int, msg string, err error) {
	id := RequestIDOf(r.Context())
	logger.Warn(msg, "request_id", id, "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	Write(w, status, ErrorBody{Error: msg, RequestID: id})
}

// RequestIDHeader carries a request's id in the response.
const RequestIDHeader = "X-Request-Id"

type ctxKey struct{}

// RequestID gives every request an id of its own (a client's X-Request-Id
// is not trusted: ids must be unique in the logs), in the context and the
// response's X-Request-Id header.
func RequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, id)))
	})
}

// RequestIDOf is the request's id ("" outside RequestID).
func RequestIDOf(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// Unrouted makes the router's answers for an unknown path (404) and a
// method a path does not take (405, with Allow) the same JSON error shape
// as every other error, saying what was asked for.
func Unrouted(mux *chi.Mux) {
	mux.NotFound(func(w http.ResponseWriter, r *http.Request) {
		Error(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %.200s", r.URL.Path))
	})
	mux.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if mux.Match(chi.NewRouteContext(), m, r.URL.Path) {
				allowed = append(allowed, m)
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		Error(w, http.StatusMethodNotAllowed, fmt.Sprintf("%.200s takes %s, not %.20q", r.URL.Path, strings.Join(allowed, " or "), r.Method))
	})
}
