// Package realdeps decides what a test does when a real dependency
// (PostgreSQL, Apache Kafka, Prometheus, root) is missing: under make test,
// which provides them all and sets REQUIRE_REAL_DEPS, it fails — a test
// skipped there would prove nothing; run alone with go test, it skips and
// says what it needs.
package realdeps

import (
	"fmt"
	"os"
	"testing"
)

// Env is set by make test.
const Env = "REQUIRE_REAL_DEPS"

// Required reports whether missing dependencies are failures.
func Required() bool { return os.Getenv(Env) != "" }

// Missing stops the test because a dependency is missing: a failure when
// Required, a skip otherwise. why says what is needed and how to get it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s is set: make test must run this test)", why, Env)
	}
	t.Skip(why)
}
