// Package health serves /healthz and /readyz the way Kubernetes' own
// servers do: /readyz runs named checks and names each one that fails, and
// ?exclude=<name> (repeatable) leaves a check out.
//
// Exclusion is what the readiness probes use for shared backends: when
// Kafka is away no web server pod can publish, and taking every pod out of
// the Service would turn clear per-request 503s into refused connections.
// The probe asks /readyz?exclude=kafka; a person or a start script asks
// /readyz and learns about Kafka too.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/purchase-system/purchase-system/servicekit/httpjson"
)

// Check is one readiness dependency: nil means ready.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// CheckTimeout bounds all checks of one /readyz together: a probe's own
// timeout is 1 s by default, a hung backend must not hang the probe.
const CheckTimeout = 2 * time.Second

// Healthz answers 200 while the process serves at all.
func Healthz() http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

// Readyz runs every check not excluded by the request and answers 200, or
// 503 naming the failed checks (their causes go to the log under the
// request id, not to the caller). An exclude naming no check is a 400: a
// misspelt probe must not pass silently.
func Readyz(logger *slog.Logger, checks ...Check) http.HandlerFunc {
	known := map[string]bool{}
	for _, c := range checks {
		known[c.Name] = true
	}
	return func(w http.ResponseWriter, r *http.Request) {
		excluded := map[string]bool{}
		for _, name := range r.URL.Query()["exclude"] {
			if !known[name] {
				httpjson.Error(w, http.StatusBadRequest, fmt.Sprintf("exclude=%q names no check; checks are %s", name, names(checks)))
				return
			}
			excluded[name] = true
		}
		ctx, cancel := context.WithTimeout(r.Context(), CheckTimeout)
		defer cancel()
		var failed []string
		var errs []error
		for _, c := range checks {
			if excluded[c.Name] {
				continue
			}
			if err := c.Check(ctx); err != nil {
				failed = append(failed, c.Name)
				errs = append(errs, fmt.Errorf("%s: %w", c.Name, err))
			}
		}
		if len(failed) > 0 {
			httpjson.Fail(w, r, logger, http.StatusServiceUnavailable, "not ready: "+strings.Join(failed, ", ")+" unavailable", errors.Join(errs...))
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

func names(checks []Check) string {
	var n []string
	for _, c := range checks {
		n = append(n, c.Name)
	}
	return strings.Join(n, ", ")
}
