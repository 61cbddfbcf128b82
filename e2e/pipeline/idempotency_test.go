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
