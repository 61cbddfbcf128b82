// Package readiness decides when the adapter is ready: when at least one
// of its sources has metrics to serve. One source's outage (Prometheus
// away, Kafka away) must not take the other's metrics out of the Service:
// the pod stays Ready while either serves, and /readyz names the failing
// source in a check of its own.
package readiness

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"k8s.io/apiserver/pkg/server/healthz"
)

// Source is one backend of metrics.
type Source struct {
	Name string
	// Serving reports whether the adapter has this source's metrics to
	// serve (found once, kept across reloads and failed rounds).
	Serving func() error
	// Reachable reports whether the source answers now.
	Reachable func() error
}

// ServingCheck is the name of the check the readiness probe uses; the
// per-source checks are named after their sources and are what a probe
// excludes: /readyz?exclude=prometheus&exclude=kafka.
const ServingCheck = "metric-sources"

// Checks are the readiness checks: ServingCheck (some source serves) and
// one per source (it answers now).
func Checks(sources ...Source) []healthz.HealthChecker {
	checks := []healthz.HealthChecker{healthz.NamedCheck(ServingCheck, func(*http.Request) error { return Serving(sources...) })}
	for _, s := range sources {
		checks = append(checks, healthz.NamedCheck(s.Name, func(*http.Request) error {
			if err := s.Reachable(); err != nil {
				return fmt.Errorf("%s is failing (its metrics are served while they last, the others' are not affected): %w", s.Name, err)
			}
			return nil
		}))
	}
	return checks
}

// Serving is nil when at least one source has metrics to serve, and
// otherwise says why each does not.
func Serving(sources ...Source) error {
	var why []string
	for _, s := range sources {
		err := s.Serving()
		if err == nil {
			return nil
		}
		why = append(why, s.Name+": "+err.Error())
	}
	if len(why) == 0 {
		return errors.New("no metric source is configured")
	}
	return errors.New("no metric source has metrics to serve: " + strings.Join(why, "; "))
}

// ExcludeQuery is the query string that leaves the per-source checks out.
func ExcludeQuery(sources ...Source) string {
	var q []string
	for _, s := range sources {
		q = append(q, "exclude="+s.Name)
	}
	return strings.Join(q, "&")
}
