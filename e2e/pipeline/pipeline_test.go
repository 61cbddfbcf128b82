// Package pipeline tests the two purchase services together as processes:
// web server → Kafka → consumer → store → web server.
package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/purchase-system/purchase-system/consumer/storetest"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// purchase mirrors the JSON contract; the test reads it as a client would.
type purchase struct {
	ID        string    `json:"id"`
	Username  string    `json:"username"`
	UserID    string    `json:"userid"`
	Price     float64   `json:"price"`
	Timestamp time.Time `json:"timestamp"`
}

// system is one web server and one consumer sharing a broker and a store.
type system struct {
	t           *testing.T
	kafka       string
	databaseURL string
	webURL      string
	consumerURL string
	consumerEnv []string
	web         *testproc.Proc
	consumer    *testproc.Proc
}

func startSystem(t *testing.T, kafka, databaseURL string, extraEnv ...string) *system {
	s := &system{t: t, kafka: kafka, databaseURL: databaseURL}
	cport, wport := testproc.FreePort(t), testproc.FreePort(t)
	s.consumerURL = fmt.Sprintf("http://127.0.0.1:%d", cport)
	s.webURL = fmt.Sprintf("http://127.0.0.1:%d", wport)
	common := append([]string{"KAFKA_BOOTSTRAP_SERVERS=" + kafka, "KAFKA_EXTRA_CONFIG=" + testkafka.FastClientConfig}, extraEnv...)
	s.consumerEnv = append([]string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", cport), "DATABASE_URL=" + databaseURL}, common...)
	s.startConsumer()
	s.web = testproc.Start(t, "webserver", append([]string{
		fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", wport), "CUSTOMER_MANAGEMENT_URL=" + s.consumerURL, "PUBLISH_TIMEOUT=2s",
	}, common...)...)
	testproc.WaitHTTP(t, s.webURL+"/readyz", 200, 30*time.Second)
	return s
}

func (s *system) startConsumer() {
	s.consumer = testproc.Start(s.t, "consumer", s.consumerEnv...)
	testproc.WaitHTTP(s.t, s.consumerURL+"/readyz", 200, 30*time.Second)
}

func (s *system) buy(username, userid string, price float64) (int, []byte) {
	body := fmt.Sprintf(`{"username":%q,"userid":%q,"price":%v}`, username, userid, price)
	resp, err := http.Post(s.webURL+"/buy", "application/json", strings.NewReader(body))
	if err != nil {
		s.t.Fatalf("POST /buy: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func getJSON(t testing.TB, u string, v any) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v in %s", u, err, b)
		}
	}
	return resp.StatusCode
}

// allStored pages through the consumer's purchase log.
func (s *system) allStored() []purchase {
	var out []purchase
	after := ""
	for {
		var page struct {
			Purchases []purchase `json:"purchases"`
			Next      string     `json:"next"`
		}
		if code := getJSON(s.t, s.consumerURL+"/purchases?limit=10000&after="+url.QueryEscape(after), &page); code != 200 {
			s.t.Fatalf("GET /purchases: %d", code)
		}
		out = append(out, page.Purchases...)
		if page.Next == "" {
			return out
		}
		after = page.Next
	}
}

// metric reads one sample from a /metrics page; -1 when absent.
func metric(t testing.TB, base, series string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// checkBuyStoreRead is the path every deployment must get right: a purchase
// acknowledged by POST /buy is stored once and read back through the web
// server.
func checkBuyStoreRead(t *testing.T, s *system) {
	code, body := s.buy("Ada", "user-42", 12.5)
	if code != http.StatusCreated {
		t.Fatalf("POST /buy = %d %s, want 201", code, body)
	}
	var accepted purchase
	if err := json.Unmarshal(body, &accepted); err != nil || accepted.ID == "" || accepted.Timestamp.IsZero() {
		t.Fatalf("201 body %s: %v", body, err)
	}
	if accepted.Username != "Ada" || accepted.UserID != "user-42" || accepted.Price != 12.5 {
		t.Fatalf("201 body %+v does not echo the purchase", accepted)
	}

	var got []purchase
	testproc.Eventually(t, 20*time.Second, "purchase readable via /getAllUserBuys", func() error {
		got = nil
		if code := getJSON(t, s.webURL+"/getAllUserBuys/user-42", &got); code != 200 {
			return fmt.Errorf("status %d", code)
		}
		if len(got) == 0 {
			return fmt.Errorf("no purchases yet")
		}
		return nil
	})
	if len(got) != 1 || got[0].ID != accepted.ID || got[0].Price != 12.5 || !got[0].Timestamp.Equal(accepted.Timestamp) {
		t.Fatalf("getAllUserBuys = %+v, want exactly %+v", got, accepted)
	}
	if code := getJSON(t, s.webURL+"/getAllUserBuys/nobody", &got); code != 200 || len(got) != 0 {
		t.Fatalf("unknown user: %d %+v, want 200 []", code, got)
	}
	// The consumer counts a message processed after its offset commit,
	// which follows the insert a reader can already see: the count may
	// trail the read by that round trip.
	testproc.Eventually(t, 10*time.Second, "the purchase counted as processed", func() error {
		if v := metric(t, s.consumerURL, `kafka_messages_processed_total{status="success"}`); v != 1 {
			return fmt.Errorf(`kafka_messages_processed_total{status="success"} = %v, want 1`, v)
		}
		return nil
	})
}

func TestBuyIsStoredOnceAndReadBack(t *testing.T) {
	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := startSystem(t, kafka, "sqlite://"+t.TempDir()+"/p.db")
	checkBuyStoreRead(t, s)

	// The metrics contract: exact counts per route pattern and status; the
	// probes and scrapes of this test are not counted.
	s.buy("", "x", 1)
	for series, want := range map[string]float64{
		`flask_http_request_total{method="POST",path="/buy",status="201"}`:                    1,
		`flask_http_request_total{method="POST",path="/buy",status="400"}`:                    1,
		`flask_http_request_total{method="GET",path="/getAllUserBuys/{userid}",status="200"}`: -2, // polled: at least 2
	} {
		got := metric(t, s.webURL, series)
		if (want >= 0 && got != want) || (want < 0 && got < -want) {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if v := metric(t, s.webURL, `flask_http_request_total{method="GET",path="/readyz",status="200"}`); v != -1 {
		t.Errorf("readiness probes are counted: %v", v)
	}
}

func TestConsumerKilledMidStreamLosesAndDuplicatesNothing(t *testing.T) {
	const total = 10000
	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := startSystem(t, kafka, "sqlite://"+t.TempDir()+"/p.db", "BATCH_SIZE=200", "KAFKA_EXTRA_CONFIG="+testkafka.FastFailoverConfig)

	var acked sync.Map
	var sent, nacked atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				n := sent.Add(1)
				if n > total {
					return
				}
				body := fmt.Sprintf(`{"username":"u","userid":"user-%d","price":%d}`, n%97, 1+n%50)
				resp, err := client.Post(s.webURL+"/buy", "application/json", strings.NewReader(body))
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					nacked.Add(1)
					continue
				}
				var p purchase
				if err := json.Unmarshal(b, &p); err != nil {
					t.Errorf("bad 201 body %s", b)
					return
				}
				acked.Store(p.ID, p)
			}
		}()
	}

	// Kill the consumer twice while purchases stream in: no graceful
	// shutdown, no final commit.
	for round := range 2 {
		threshold := float64(2000 + 3000*round)
		testproc.Eventually(t, 60*time.Second, "consumer progress", func() error {
			if v := metric(t, s.consumerURL, `kafka_messages_processed_total{status="success"}`); v < threshold-float64(3000*round) {
				return fmt.Errorf("processed %v", v)
			}
			return nil
		})
		s.consumer.Kill()
		time.Sleep(200 * time.Millisecond)
		s.startConsumer()
	}
	wg.Wait()
	if nacked.Load() != 0 {
		t.Fatalf("%d purchases were refused while only the consumer was restarted", nacked.Load())
	}

	want := map[string]purchase{}
	acked.Range(func(k, v any) bool { want[k.(string)] = v.(purchase); return true })
	if len(want) != total {
		t.Fatalf("%d purchases acknowledged, want %d", len(want), total)
	}
	var stored []purchase
	testproc.Eventually(t, 90*time.Second, "every acknowledged purchase stored", func() error {
		stored = s.allStored()
		if len(stored) < total {
			return fmt.Errorf("%d of %d stored", len(stored), total)
		}
		return nil
	})
	seen := map[string]bool{}
	for _, p := range stored {
		if seen[p.ID] {
			t.Fatalf("purchase %s stored twice", p.ID)
		}
		seen[p.ID] = true
		w, ok := want[p.ID]
		if !ok {
			t.Fatalf("stored purchase %s was never acknowledged", p.ID)
		}
		if w.UserID != p.UserID || w.Price != p.Price || !w.Timestamp.Equal(p.Timestamp) {
			t.Fatalf("stored %+v differs from acknowledged %+v", p, w)
		}
	}
	if len(stored) != total {
		t.Fatalf("%d rows stored, want %d", len(stored), total)
	}
	t.Logf("after two SIGKILLs: %d stored; the restarted consumer re-read and skipped %v already stored",
		len(stored), metric(t, s.consumerURL, "purchases_duplicates_total"))
}

func TestPoisonMessageGoesToDeadLetterTopic(t *testing.T) {
	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := startSystem(t, kafka, "sqlite://"+t.TempDir()+"/p.db")

	cl, err := kgo.NewClient(kgo.SeedBrokers(kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	poison := []byte(`{"username":"x","userid":"y","price":"free"}`)
	// Same key as the valid purchase below, so both land on one partition:
	// the poison must not block what follows it.
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: "purchases", Key: []byte("user-7"), Value: poison}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if code, body := s.buy("Grace", "user-7", 3); code != http.StatusCreated {
		t.Fatalf("POST /buy = %d %s", code, body)
	}

	testproc.Eventually(t, 20*time.Second, "valid purchase after the poison stored", func() error {
		var got []purchase
		if getJSON(t, s.webURL+"/getAllUserBuys/user-7", &got); len(got) != 1 {
			return fmt.Errorf("%d purchases", len(got))
		}
		return nil
	})
	if v := metric(t, s.consumerURL, `kafka_messages_processed_total{status="error"}`); v != 1 {
		t.Fatalf(`kafka_messages_processed_total{status="error"} = %v, want 1`, v)
	}

	dlq, err := kgo.NewClient(kgo.SeedBrokers(kafka), kgo.ConsumeTopics("purchases.dlq"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fetches := dlq.PollFetches(ctx)
	recs := fetches.Records()
	if len(recs) != 1 || !bytes.Equal(recs[0].Value, poison) {
		t.Fatalf("dead-letter topic holds %d records, want the poison message once (errors: %v)", len(recs), fetches.Errors())
	}
	headers := map[string]string{}
	for _, h := range recs[0].Headers {
		headers[h.Key] = string(h.Value)
	}
	if !strings.Contains(headers["error"], "price") || headers["source-topic"] != "purchases" || headers["source-offset"] == "" {
		t.Fatalf("dead-letter headers %v do not say what was wrong and where it came from", headers)
	}
}

func TestBrokerDownAnswers503AndAcknowledgesNothing(t *testing.T) {
	cluster, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := startSystem(t, kafka, "sqlite://"+t.TempDir()+"/p.db")
	checkBuyStoreRead(t, s)

	cluster.Close()
	for i := range 3 {
		start := time.Now()
		code, body := s.buy("Ada", "user-down", float64(i+1))
		if code != http.StatusServiceUnavailable {
			t.Fatalf("POST /buy with the broker down = %d %s, want 503", code, body)
		}
		var e struct{ Error string }
		if json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "purchase not accepted") {
			t.Fatalf("503 body %s does not say the purchase was not accepted", body)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("503 took %s; PUBLISH_TIMEOUT is 2s", d)
		}
	}
	if code := getJSON(t, s.webURL+"/readyz", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the broker down = %d, want 503", code)
	}
	if v := metric(t, s.webURL, `flask_http_request_total{method="POST",path="/buy",status="201"}`); v != 1 {
		t.Fatalf("201 count = %v, want only the one before the broker went down", v)
	}
}

func TestGracefulStopExitsZero(t *testing.T) {
	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := startSystem(t, kafka, "sqlite://"+t.TempDir()+"/p.db")
	checkBuyStoreRead(t, s)
	if err := s.web.Stop(30 * time.Second); err != nil {
		t.Fatalf("webserver on SIGTERM: %v", err)
	}
	if err := s.consumer.Stop(30 * time.Second); err != nil {
		t.Fatalf("consumer on SIGTERM: %v", err)
	}
	if !strings.Contains(s.consumer.Log(), "shutting down") {
		t.Fatalf("consumer did not drain its HTTP server")
	}
}

// TestRealKafkaAndPostgres runs the buy → store → read path once through the
// real Apache Kafka broker and a real PostgreSQL server.
func TestRealKafkaAndPostgres(t *testing.T) {
	kafka := testkafka.Real(t)
	db := storetest.PostgresURL(t)
	if db == "" {
		realdeps.Missing(t, "needs PostgreSQL: set %s (make test starts a server and sets it)", storetest.PostgresEnv)
	}
	// A topic and group of its own, so runs never see each other's data.
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	s := startSystem(t, kafka, db, "KAFKA_TOPIC=purchases-"+suffix, "KAFKA_GROUP_ID=pipeline-"+suffix, "KAFKA_EXTRA_CONFIG=")
	checkBuyStoreRead(t, s)
}
