package pipeline

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/consumer/storetest"
	"github.com/purchase-system/purchase-system/testkit/faultproxy"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// TestConsumerStartedWithTheDatabaseDownWaitsForIt starts the consumer
// while PostgreSQL is unreachable, as a new replica does while the
// database restarts. It stays up, alive and unready, saying why; when the
// database comes back it becomes ready on its own and stores purchases.
// (A consumer that exits instead is restarted by Kubernetes with a
// back-off that grows to five minutes.)
func TestConsumerStartedWithTheDatabaseDownWaitsForIt(t *testing.T) {
	db := storetest.PostgresURL(t)
	if db == "" {
		realdeps.Missing(t, "needs PostgreSQL: set %s (make test starts a server and sets it)", storetest.PostgresEnv)
	}
	u, _ := url.Parse(db)
	proxy := faultproxy.Start(t, u.Host)
	proxy.Cut()
	viaProxy := *u
	viaProxy.Host = proxy.Addr

	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := &system{t: t, kafka: kafka, databaseURL: viaProxy.String()}
	cport := testproc.FreePort(t)
	s.consumerURL = fmt.Sprintf("http://127.0.0.1:%d", cport)
	s.consumerEnv = []string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", cport), "DATABASE_URL=" + s.databaseURL,
		"KAFKA_BOOTSTRAP_SERVERS=" + kafka, "KAFKA_EXTRA_CONFIG=" + testkafka.FastClientConfig}
	s.consumer = testproc.Start(t, "consumer", s.consumerEnv...)

	testproc.WaitHTTP(t, s.consumerURL+"/healthz", 200, 20*time.Second)
	time.Sleep(3 * time.Second) // a few failed attempts to open the database
	if s.consumer.Exited() {
		t.Fatalf("the consumer exited with the database down:\n%s", s.consumer.Log())
	}
	resp, err := http.Get(s.consumerURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "waiting for the database") {
		t.Fatalf("/readyz with the database down = %d %s, want 503 saying it waits for the database", resp.StatusCode, body)
	}
	if !strings.Contains(s.consumer.Log(), "opening the database failed; retrying") {
		t.Fatalf("the consumer does not say what it waits for:\n%s", s.consumer.Log())
	}

	proxy.Restore()
	testproc.WaitHTTP(t, s.consumerURL+"/readyz", 200, 30*time.Second)
	wport := testproc.FreePort(t)
	s.webURL = fmt.Sprintf("http://127.0.0.1:%d", wport)
	s.web = testproc.Start(t, "webserver", fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", wport), "CUSTOMER_MANAGEMENT_URL="+s.consumerURL,
		"KAFKA_BOOTSTRAP_SERVERS="+kafka, "KAFKA_EXTRA_CONFIG="+testkafka.FastClientConfig)
	testproc.WaitHTTP(t, s.webURL+"/readyz", 200, 30*time.Second)
	// A user of its own: the database is shared with other tests.
	code, b := s.buy("Ada", fmt.Sprintf("startup-%d", time.Now().UnixNano()), 3)
	if code != http.StatusCreated {
		t.Fatalf("POST /buy = %d %s", code, b)
	}
	testproc.Eventually(t, 20*time.Second, "the purchase stored", func() error {
		if v := metric(t, s.consumerURL, `kafka_messages_processed_total{status="success"}`); v != 1 {
			return fmt.Errorf("processed %v", v)
		}
		return nil
	})
}
