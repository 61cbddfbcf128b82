// Package testkafka gives tests a Kafka to talk to: an in-process
// Kafka-protocol broker (franz-go's kfake) for fast tests, or the real
// Apache Kafka broker that make test starts.
package testkafka

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testproc"
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

// SecureEnv and TLSDirEnv name the real broker's SASL_SSL listener
// (SCRAM-SHA-512, client certificates required) and the directory with its
// CA and a client certificate (ca.crt, client.crt, client.key), as
// scripts/kafka.sh writes them with KAFKA_SECURE_PORT.
const (
	SecureEnv = "TEST_KAFKA_SASL_SSL"
	TLSDirEnv = "TEST_KAFKA_TLS_DIR"
)

// Secure returns the real broker's SASL_SSL address and TLS directory;
// without them the test stops (see realdeps).
func Secure(t testing.TB) (bootstrap, tlsDir string) {
	t.Helper()
	bootstrap, tlsDir = os.Getenv(SecureEnv), os.Getenv(TLSDirEnv)
	if bootstrap == "" || tlsDir == "" {
		realdeps.Missing(t, "needs the real broker's SASL_SSL listener: set %s and %s (make test starts one and sets them)", SecureEnv, TLSDirEnv)
	}
	return bootstrap, tlsDir
}

// FastClientConfig is librdkafka tuning for tests against kfake: a short
// fetch wait makes commits, watermark queries and Close take ~50 ms
// instead of ~500 ms.
const FastClientConfig = "fetch.wait.max.ms=50"

// FastFailoverConfig adds a short group session, so a killed consumer's
// partitions move to a new member in about 2 s.
const FastFailoverConfig = FastClientConfig + ",session.timeout.ms=2000,heartbeat.interval.ms=500"

// StartBroker starts a real Apache Kafka broker (scripts/kafka.sh, stock
// settings: num.partitions=1, auto.create.topics.enable=true) listening on
// 127.0.0.1:port, with its data in a temporary directory, and stops it when
// the test ends. It needs the broker's jars in the tools cache and port+1
// free for its controller.
func StartBroker(t testing.TB, port int) {
	t.Helper()
	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("java"); err != nil {
		realdeps.Missing(t, "needs java to run the Apache Kafka broker (make test installs what it needs)")
	}
	dir := t.TempDir()
	script := filepath.Join(root, "scripts", "kafka.sh")
	out, err := exec.Command(script, "start", dir, strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		t.Fatalf("starting Kafka on port %d: %v\n%s", port, err, out)
	}
	t.Cleanup(func() { _ = exec.Command(script, "stop", dir).Run() })
}
