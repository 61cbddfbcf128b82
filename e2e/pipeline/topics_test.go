package pipeline

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// freePortPair is a port whose next one is free too (the broker's
// controller listens on port+1).
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		p := testproc.FreePort(t)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no two free ports in a row")
	return 0
}

func partitions(t *testing.T, bootstrap string, topics ...string) map[string]int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	td, err := kadm.NewClient(cl).ListTopics(ctx, topics...)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, d := range td {
		if d.Err == nil {
			out[d.Topic] = len(d.Partitions)
		}
	}
	return out
}

// TestTopicsGetTheirPartitionsWhenKafkaComesLate starts both services
// before a stock Apache Kafka broker (num.partitions=1, topic
// auto-creation on) and asks their readiness all along, as the kubelet
// does. Readiness asks the broker about the topic; that question must not
// create it with the broker's one partition: the services create it with
// KAFKA_PARTITIONS (5). Then an existing one-partition topic is grown.
func TestTopicsGetTheirPartitionsWhenKafkaComesLate(t *testing.T) {
	port := freePortPair(t)
	bootstrap := fmt.Sprintf("127.0.0.1:%d", port)
	wport, cport := testproc.FreePort(t), testproc.FreePort(t)
	webURL, consumerURL := fmt.Sprintf("http://127.0.0.1:%d", wport), fmt.Sprintf("http://127.0.0.1:%d", cport)
	testproc.Start(t, "consumer", fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", cport), "KAFKA_BOOTSTRAP_SERVERS="+bootstrap,
		"DATABASE_URL=sqlite://"+filepath.Join(t.TempDir(), "p.db"))
	testproc.Start(t, "webserver", fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", wport), "KAFKA_BOOTSTRAP_SERVERS="+bootstrap,
		"CUSTOMER_MANAGEMENT_URL="+consumerURL)
	testproc.WaitHTTP(t, webURL+"/healthz", 200, 30*time.Second)

	var stop atomic.Bool
	defer stop.Store(true)
	go func() {
		c := &http.Client{Timeout: time.Second}
		for !stop.Load() {
			for _, u := range []string{webURL, consumerURL} {
				if resp, err := c.Get(u + "/readyz"); err == nil {
					resp.Body.Close()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// Let the services' topic creation back off (1, 2, 4 s …), so the
	// readiness questions reach the new broker first, as they do when
	// Kafka starts after the services.
	time.Sleep(8 * time.Second)
	testkafka.StartBroker(t, port)
	testproc.WaitHTTP(t, webURL+"/readyz", 200, 90*time.Second)
	testproc.WaitHTTP(t, consumerURL+"/readyz", 200, 90*time.Second)
	// The consumer creates the dead-letter topic on its own retry
	// schedule.
	testproc.Eventually(t, 60*time.Second, "both topics with 5 partitions", func() error {
		got := partitions(t, bootstrap, "purchases", "purchases.dlq")
		if got["purchases"] == 1 || got["purchases.dlq"] == 1 {
			t.Fatalf("partitions %v: a topic got the broker's default 1 instead of KAFKA_PARTITIONS (5)", got)
		}
		if got["purchases"] != 5 || got["purchases.dlq"] != 5 {
			return fmt.Errorf("partitions %v", got)
		}
		return nil
	})

	// A topic that exists with fewer partitions is grown, and said so.
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 1, 1, nil, "short"); err != nil {
		t.Fatal(err)
	}
	w2 := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	web2 := testproc.Start(t, "webserver", "HTTP_ADDR="+w2, "KAFKA_BOOTSTRAP_SERVERS="+bootstrap, "KAFKA_TOPIC=short")
	testproc.WaitHTTP(t, "http://"+w2+"/readyz", 200, 60*time.Second)
	testproc.Eventually(t, 30*time.Second, "topic short grown to 5", func() error {
		if n := partitions(t, bootstrap, "short")["short"]; n != 5 {
			return fmt.Errorf("%d partitions", n)
		}
		return nil
	})
	if !strings.Contains(web2.Log(), `"msg":"Kafka topic had fewer partitions than KAFKA_PARTITIONS: grown`) {
		t.Errorf("growing the topic was not logged:\n%s", web2.Log())
	}
	// Nothing else was created by asking about it.
	for topic := range partitions(t, bootstrap) {
		if !strings.HasPrefix(topic, "purchases") && topic != "short" && !strings.HasPrefix(topic, "__") {
			t.Errorf("unexpected topic %q", topic)
		}
	}
}

// librdkafka's own log lines ("%3|…|FAIL|… Connection refused", every few
// milliseconds while a broker is away) come out as the services' JSON log
// lines, each distinct one at most once per interval.
func TestKafkaClientLogsAreJSONAndRateLimited(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", testproc.FreePort(t))
	web := testproc.Start(t, "webserver", "HTTP_ADDR="+addr, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1")
	testproc.WaitHTTP(t, "http://"+addr+"/healthz", 200, 30*time.Second)
	time.Sleep(3 * time.Second)
	var librdkafka int
	for _, line := range strings.Split(strings.TrimSpace(web.Log()), "\n") {
		if !strings.HasPrefix(line, "{") {
			t.Errorf("a log line that is not JSON: %q", line)
		}
		if strings.Contains(line, `"librdkafka":"FAIL"`) {
			librdkafka++
		}
	}
	if librdkafka == 0 || librdkafka > 3 {
		t.Errorf("%d JSON lines of librdkafka's FAIL in 3 s with the broker away, want 1 to 3 (rate-limited):\n%s", librdkafka, web.Log())
	}
}
