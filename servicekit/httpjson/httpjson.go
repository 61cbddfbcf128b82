// Package httpjson writes JSON responses and the one error shape both
// services use: {"error": "<what is wrong>"}.
package httpjson

import (
	"encoding/json"
	"log/slog"
	"net/http"
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
	Error string `json:"error"`
}

// Error sends {"error": msg} with the given status.
func Error(w http.ResponseWriter, status int, msg string) {
	Write(w, status, ErrorBody{Error: msg})
}
