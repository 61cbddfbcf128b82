package pipeline

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

func (s *system) buyWithKey(key, body string) (int, purchase, http.Header) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.webURL+"/buy", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var p purchase
	_ = json.Unmarshal(b, &p)
	return resp.StatusCode, p, resp.Header
}

// A client that did not get its answer (a timeout, a 503 after which
// Kafka still took the purchase) retries with the same Idempotency-Key:
// the purchase is stored once, and a retry after it was stored gets it
// back as stored.
func TestRetriesWithAnIdempotencyKeyStoreOnce(t *testing.T) {
	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq")
	s := startSystem(t, kafka, "sqlite://"+t.TempDir()+"/p.db")
	body := `{"username":"ann","userid":"idem-1","price":12.5}`

	// Three attempts at once, none knowing of the others.
	var wg sync.WaitGroup
	ids := make(chan string, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, p, _ := s.buyWithKey("order-7731", body)
			if code != 201 && code != 200 {
				t.Errorf("attempt: %d", code)
			}
			ids <- p.ID
		}()
	}
	wg.Wait()
	close(ids)
	var id string
	for got := range ids {
		if id != "" && got != id {
			t.Fatalf("attempts with one key got ids %s and %s", id, got)
		}
		id = got
	}
	var stored []purchase
	testproc.Eventually(t, 20*time.Second, "the purchase stored", func() error {
		stored = nil
		getJSON(t, s.webURL+"/getAllUserBuys/idem-1", &stored)
		if len(stored) == 0 {
			return fmt.Errorf("not stored yet")
		}
		return nil
	})
	time.Sleep(time.Second) // the other attempts' messages are consumed too
	getJSON(t, s.webURL+"/getAllUserBuys/idem-1", &stored)
	if len(stored) != 1 || stored[0].ID != id {
		t.Fatalf("stored %+v, want one purchase %s", stored, id)
	}

	// A retry now is answered with the stored purchase.
	code, p, h := s.buyWithKey("order-7731", body)
	if code != 200 || p.ID != id || !p.Timestamp.Equal(stored[0].Timestamp) || h.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry after storing: %d %+v %v, want 200 with the stored purchase", code, p, h)
	}
	// The key with another purchase is refused; another key is another purchase.
	if code, _, _ := s.buyWithKey("order-7731", `{"username":"ann","userid":"idem-1","price":99}`); code != 422 {
		t.Fatalf("same key, other price: %d, want 422", code)
	}
	if code, p2, _ := s.buyWithKey("order-7732", body); code != 201 || p2.ID == id {
		t.Fatalf("another key: %d %s", code, p2.ID)
	}
	// Keys are checked.
	for _, bad := range []string{strings.Repeat("k", 256), "has space", "ü"} {
		if code, _, _ := s.buyWithKey(bad, body); code != 400 {
			t.Errorf("Idempotency-Key %q: %d, want 400", bad, code)
		}
	}
}

// A key's purchase is decided before anything is stored: requests racing
// with one Idempotency-Key and two different bodies (price 10 and 9999)
// get one purchase — every 2xx carries it, with one id and one timestamp —
// and the other body is 422, although the consumer has not stored
// anything (it reads another topic here, so nothing is ever stored). Before,
// both bodies got 201 with the same id until the purchase was stored, and
// the caller whose purchase the consumer dropped held a 201 for it. With
// the claim store away a keyed purchase is 503; one without a key is
// still accepted.
func TestAKeysPurchaseIsDecidedBeforeItIsStored(t *testing.T) {
	_, kafka := testkafka.Fake(t, "purchases", "purchases.dlq", "elsewhere", "elsewhere.dlq")
	cport, wport := testproc.FreePort(t), testproc.FreePort(t)
	consumerURL := fmt.Sprintf("http://127.0.0.1:%d", cport)
	common := []string{"KAFKA_BOOTSTRAP_SERVERS=" + kafka, "KAFKA_EXTRA_CONFIG=" + testkafka.FastClientConfig}
	consumer := testproc.Start(t, "consumer", append([]string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", cport),
		"DATABASE_URL=sqlite://" + t.TempDir() + "/p.db", "KAFKA_TOPIC=elsewhere", "KAFKA_DLQ_TOPIC=elsewhere.dlq"}, common...)...)
	testproc.WaitHTTP(t, consumerURL+"/readyz", 200, 30*time.Second)
	s := &system{t: t, webURL: fmt.Sprintf("http://127.0.0.1:%d", wport)}
	testproc.Start(t, "webserver", append([]string{fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", wport),
		"CUSTOMER_MANAGEMENT_URL=" + consumerURL, "PUBLISH_TIMEOUT=2s"}, common...)...)
	testproc.WaitHTTP(t, s.webURL+"/readyz", 200, 30*time.Second)

	bodies := []string{`{"username":"ann","userid":"race-1","price":10}`, `{"username":"ann","userid":"race-1","price":9999}`}
	type answer struct {
		code int
		p    purchase
		body int
	}
	answers := make(chan answer, 20)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, p, _ := s.buyWithKey("order-race", bodies[i%2])
			answers <- answer{code, p, i % 2}
		}()
	}
	wg.Wait()
	close(answers)
	winner := -1
	var decided purchase
	created := 0
	for a := range answers {
		switch a.code {
		case 201, 200:
			if winner == -1 {
				winner, decided = a.body, a.p
			}
			if a.body != winner || a.p.ID != decided.ID || !a.p.Timestamp.Equal(decided.Timestamp) || a.p.Price != decided.Price {
				t.Fatalf("two purchases acknowledged under one key: %+v (body %d) and %+v (body %d)", decided, winner, a.p, a.body)
			}
			if a.code == 201 {
				created++
			}
		case 422:
			if winner != -1 && a.body == winner {
				t.Fatalf("the winning body got 422")
			}
		default:
			t.Fatalf("answer %d", a.code)
		}
	}
	if winner == -1 || created != 1 {
		t.Fatalf("winner %d, %d answers 201: want one purchase created once", winner, created)
	}
	// The losing body stays refused.
	if code, _, _ := s.buyWithKey("order-race", bodies[1-winner]); code != 422 {
		t.Fatalf("the other body later: %d, want 422", code)
	}

	// The claim store away: a keyed purchase cannot be decided.
	consumer.Kill()
	if code, _, _ := s.buyWithKey("order-away", bodies[0]); code != 503 {
		t.Fatalf("keyed purchase with the claim store away: %d, want 503", code)
	}
	if code, b := s.buy("ann", "race-1", 1); code != 201 {
		t.Fatalf("purchase without a key with the claim store away: %d %s, want 201", code, b)
	}
}
