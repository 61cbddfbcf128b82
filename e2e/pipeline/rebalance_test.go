package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"regexp"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/purchase-system/purchase-system/consumer/storetest"
	pcontract "github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/testkit/faultproxy"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// TestRebalanceWithTheDatabaseDownLosesNothing runs, under every
// assignment strategy librdkafka offers, a consumer that has read messages
// it could not store yet (its database away) when a second consumer joins
// the group and takes some of its partitions. The first consumer gives up
// the revoked partitions' messages (their new owner reads them again) and
// must keep the rest: under cooperative rebalancing it keeps its other
// partitions and reads on past them. Once the database is back, every
// message is stored, once.
func TestRebalanceWithTheDatabaseDownLosesNothing(t *testing.T) {
	bootstrap := testkafka.Real(t)
	fast := "fetch.wait.max.ms=50"
	for _, s := range []struct{ name, config string }{
		{"range", fast + ",session.timeout.ms=6000,heartbeat.interval.ms=500,partition.assignment.strategy=range"},
		{"roundrobin", fast + ",session.timeout.ms=6000,heartbeat.interval.ms=500,partition.assignment.strategy=roundrobin"},
		{"cooperative-sticky", fast + ",session.timeout.ms=6000,heartbeat.interval.ms=500,partition.assignment.strategy=cooperative-sticky"},
		// KIP-848: the broker assigns, incrementally.
		{"consumer-protocol", fast + ",group.protocol=consumer"},
	} {
		t.Run(s.name, func(t *testing.T) { rebalanceWithDatabaseDown(t, bootstrap, s.config) })
	}
}

func rebalanceWithDatabaseDown(t *testing.T, bootstrap, kafkaConfig string) {
	const n = 1000
	topic := newTopic(t, bootstrap, "rebalance", 6)
	group := topic + "-group"
	ids := producePurchases(t, bootstrap, topic, n)
	dbURL, viaProxy, proxy := databaseBehindProxy(t)

	env := func(port int, db string) []string {
		return []string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port), "DATABASE_URL=" + db, "KAFKA_BOOTSTRAP_SERVERS=" + bootstrap,
			"KAFKA_TOPIC=" + topic, "KAFKA_GROUP_ID=" + group, "KAFKA_EXTRA_CONFIG=" + kafkaConfig,
			// Everything read stays in hand for a while: the rebalance
			// finds it unstored.
			"BATCH_SIZE=5000", "BATCH_WAIT=20s"}
	}
	pa := testproc.FreePort(t)
	first := testproc.Start(t, "consumer", env(pa, viaProxy)...)
	testproc.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", pa), 200, 30*time.Second)
	time.Sleep(4 * time.Second) // it reads the whole topic into its batch
	proxy.Cut()

	// A second member joins (its own database connection works).
	pb := testproc.FreePort(t)
	testproc.Start(t, "consumer", env(pb, dbURL)...)
	time.Sleep(12 * time.Second) // the rebalance, and the first member's failed store before giving partitions up
	proxy.Restore()

	var stored map[string]int
	testproc.Eventually(t, 60*time.Second, "every message stored", func() error {
		var err error
		if stored, err = storedIDs(dbURL); err != nil {
			return err
		}
		if len(stored) < n {
			return fmt.Errorf("%d of %d stored", len(stored), n)
		}
		return nil
	})
	missing := 0
	for _, id := range ids {
		if stored[id] != 1 {
			missing++
		}
	}
	if missing > 0 || len(stored) != n {
		t.Fatalf("%d messages missing, %d stored of %d\nfirst consumer's log:\n%s", missing, len(stored), n, first.Log())
	}
}

// newTopic creates a topic of its own for one test, named after prefix.
func newTopic(t *testing.T, bootstrap, prefix string, partitions int) string {
	t.Helper()
	topic := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	a, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": bootstrap})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.CreateTopics(ctx, []kafka.TopicSpecification{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}}); err != nil {
		t.Fatal(err)
	}
	return topic
}

// databaseBehindProxy is a fresh PostgreSQL database, its URL, and the
// same database through a proxy the test can cut.
func databaseBehindProxy(t *testing.T) (direct, viaProxy string, proxy *faultproxy.Proxy) {
	t.Helper()
	dbURL := storetest.PostgresURL(t)
	if dbURL == "" {
		realdeps.Missing(t, "needs PostgreSQL: set %s (make test starts a server and sets it)", storetest.PostgresEnv)
	}
	u, _ := url.Parse(dbURL)
	proxy = faultproxy.Start(t, u.Host)
	via := *u
	via.Host = proxy.Addr
	return dbURL, via.String(), proxy
}

// storedIDs counts the rows of each purchase id in the database.
func storedIDs(dbURL string) (map[string]int, error) {
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.Query("SELECT id FROM purchases")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	stored := map[string]int{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		stored[id]++
	}
	return stored, rows.Err()
}

// producePurchases writes n valid purchases to topic (keyed by user, so
// they spread over the partitions) and returns their ids.
func producePurchases(t *testing.T, bootstrap, topic string, n int) []string {
	t.Helper()
	p, err := kafka.NewProducer(&kafka.ConfigMap{"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	go func() {
		for range p.Events() {
		}
	}()
	var ids []string
	for i := range n {
		pu := pcontract.New(pcontract.Request{Username: "rb", UserID: fmt.Sprintf("user-%d", i%37), Price: 1}, time.Now())
		b, _ := pcontract.Encode(pu)
		if err := p.Produce(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
			Key: []byte(pu.UserID), Value: b}, nil); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, pu.ID)
	}
	if left := p.Flush(30000); left != 0 {
		t.Fatalf("%d purchases not delivered", left)
	}
	return ids
}

// TestAStalledConsumerDoesNotHoldTheGroup: a consumer whose database is
// away (so every store attempt fails) must keep polling, so the group can
// rebalance: a member that joins — as the HPA adds one on the lag the
// outage builds — gets partitions within a few session timeouts, not after
// max.poll.interval.ms (5 min by default), which is how long the group
// waited while the first member retried its store without polling.
func TestAStalledConsumerDoesNotHoldTheGroup(t *testing.T) {
	bootstrap := testkafka.Real(t)
	topic := newTopic(t, bootstrap, "stall", 6)
	group := topic + "-group"
	dbURL, viaProxy, proxy := databaseBehindProxy(t)
	env := func(port int, db string) []string {
		return []string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port), "DATABASE_URL=" + db, "KAFKA_BOOTSTRAP_SERVERS=" + bootstrap,
			"KAFKA_TOPIC=" + topic, "KAFKA_GROUP_ID=" + group,
			"KAFKA_EXTRA_CONFIG=fetch.wait.max.ms=50,session.timeout.ms=6000,heartbeat.interval.ms=500,partition.assignment.strategy=range"}
	}
	ids := producePurchases(t, bootstrap, topic, 200)
	pa := testproc.FreePort(t)
	first := testproc.Start(t, "consumer", env(pa, viaProxy)...)
	testproc.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", pa), 200, 30*time.Second)
	time.Sleep(3 * time.Second) // the first batch stored
	proxy.Cut()
	ids = append(ids, producePurchases(t, bootstrap, topic, 200)...) // in hand, not storable
	time.Sleep(2 * time.Second)

	pb := testproc.FreePort(t)
	second := testproc.Start(t, "consumer", env(pb, dbURL)...)
	joined := time.Now()
	assigned := regexp.MustCompile(`"msg":"partitions assigned".*"partitions":\[\d`)
	deadline := joined.Add(20 * time.Second) // a few session timeouts
	for !assigned.MatchString(second.Log()) {
		if time.Now().After(deadline) {
			t.Fatalf("the joining member got no partition within 20 s while the first one's database was away\nfirst consumer's log:\n%s", first.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the joining member got partitions %.1f s after it started", time.Since(joined).Seconds())
	proxy.Restore()

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first consumer's log:\n%s\nsecond consumer's log:\n%s", first.Log(), second.Log())
		}
	})
	testproc.Eventually(t, 60*time.Second, "every message stored once", func() error {
		stored, err := storedIDs(dbURL)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if stored[id] != 1 {
				return fmt.Errorf("%s stored %d times; %d of %d stored", id, stored[id], len(stored), len(ids))
			}
		}
		return nil
	})
}
