// Package testkafka gives tests a Kafka to talk to: an in-process
// Kafka-protocol broker (franz-go's kfake) for fast tests, or the real
// Apache Kafka broker that make test starts.
package testkafka

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/purchase-system/purchase-system/testkit/realdeps"
)

// RealEnv names the bootstrap address of a real Apache Kafka broker.
const RealEnv = "TEST_KAFKA_BOOTSTRAP"

// Fake starts an in-process broker with the given topics (5 partitions
// each) and returns it with its bootstrap address. It is closed when the
// test ends.
func Fake(t testing.TB, topics ...string) (*kfake.Cluster, string) {
	t.Helper()
	// A short minimum session timeout lets tests that kill a consumer see
	// the group rebalance in seconds rather than Kafka's default 45 s.
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(5, topics...), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, strings.Join(c.ListenAddrs(), ",")
}

// Real returns the real broker's bootstrap address; without one the test
// stops (see realdeps).
func Real(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(RealEnv)
	if addr == "" {
		realdeps.Missing(t, "needs the real Apache Kafka broker: set %s (make test starts one and sets it)", RealEnv)
	}
	return addr
}

// FastClientConfig is librdkafka tuning for tests against kfake: a short
// fetch wait makes commits, watermark queries and Close take ~50 ms
// instead of ~500 ms.
const FastClientConfig = "fetch.wait.max.ms=50"

// FastFailoverConfig adds a short group session, so a killed consumer's
// partitions move to a new member in about 2 s.
const FastFailoverConfig = FastClientConfig + ",session.timeout.ms=2000,heartbeat.interval.ms=500"
