package store_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/purchase-system/purchase-system/consumer/internal/store"
	"github.com/purchase-system/purchase-system/consumer/storetest"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

func rec(user string, ts time.Time, price float64) store.Record {
	return store.Record{Purchase: purchase.Purchase{
		ID: uuid.NewString(), Username: "name-" + user, UserID: user, Price: price, Timestamp: ts.UTC(),
	}}
}

func open(t *testing.T, b storetest.Backend) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), b.URL)
	if err != nil {
		t.Fatalf("open %s: %v", b.Name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// forEachBackend runs the same test over SQLite and PostgreSQL.
func forEachBackend(t *testing.T, f func(t *testing.T, s *store.Store)) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) { f(t, open(t, b)) })
	}
}

func TestInsertIsIdempotentByID(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
		a, b := rec("u1", t0, 10), rec("u1", t0.Add(time.Second), 20.5)
		n, err := s.Insert(ctx, []store.Record{a, b})
		if err != nil || n != 2 {
			t.Fatalf("first insert: n=%d err=%v, want 2 new", n, err)
		}
		// Kafka redelivers a after a crash, together with a new one.
		c := rec("u1", t0.Add(2*time.Second), 30)
		n, err = s.Insert(ctx, []store.Record{a, c})
		if err != nil || n != 1 {
			t.Fatalf("redelivery: n=%d err=%v, want 1 new", n, err)
		}
		got, err := s.UserPurchases(ctx, "u1", 100)
		if err != nil {
			t.Fatal(err)
		}
		want := []purchase.Purchase{c.Purchase, b.Purchase, a.Purchase} // newest first
		if !slices.EqualFunc(got, want, func(x, y purchase.Purchase) bool {
			return x.ID == y.ID && x.Price == y.Price && x.Username == y.Username && x.Timestamp.Equal(y.Timestamp)
		}) {
			t.Fatalf("UserPurchases = %+v\nwant %+v", got, want)
		}
	})
}

func TestUserPurchasesOnlyThatUserAndLimit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		t0 := time.Now()
		var recs []store.Record
		for i := range 5 {
			recs = append(recs, rec("alice", t0.Add(time.Duration(i)*time.Millisecond), float64(i+1)))
			recs = append(recs, rec("bob", t0.Add(time.Duration(i)*time.Millisecond), 1))
		}
		if _, err := s.Insert(ctx, recs); err != nil {
			t.Fatal(err)
		}
		got, err := s.UserPurchases(ctx, "alice", 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0].Price != 5 || got[2].Price != 3 {
			t.Fatalf("alice newest 3 = %+v", got)
		}
		for _, p := range got {
			if p.UserID != "alice" {
				t.Fatalf("got another user's purchase: %+v", p)
			}
		}
		none, err := s.UserPurchases(ctx, "nobody", 10)
		if err != nil || none == nil || len(none) != 0 {
			t.Fatalf("unknown user: %v %v, want empty non-nil slice", none, err)
		}
	})
}

func TestPageWalksEveryPurchaseOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		t0 := time.Now()
		var recs []store.Record
		want := map[string]bool{}
		for i := range 2500 { // more than one Insert statement's worth
			// Several purchases share a timestamp: the cursor must break ties by id.
			r := rec(fmt.Sprint("u", i%7), t0.Add(time.Duration(i/3)*time.Microsecond), 1)
			recs = append(recs, r)
			want[r.ID] = true
		}
		if n, err := s.Insert(ctx, recs); err != nil || n != len(recs) {
			t.Fatalf("insert: %d %v", n, err)
		}
		seen := map[string]bool{}
		var cur store.Cursor
		pages := 0
		for {
			ps, next, err := s.Page(ctx, cur, 300)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, p := range ps {
				if seen[p.ID] {
					t.Fatalf("purchase %s returned twice", p.ID)
				}
				seen[p.ID] = true
			}
			if next == (store.Cursor{}) {
				break
			}
			parsed, err := store.ParseCursor(next.String())
			if err != nil || parsed != next {
				t.Fatalf("cursor round trip: %v %v", parsed, err)
			}
			cur = parsed
		}
		if len(seen) != len(want) || pages != 9 {
			t.Fatalf("walked %d purchases in %d pages, want %d in 9", len(seen), pages, len(want))
		}
	})
}

func TestReopenKeepsDataAndSchema(t *testing.T) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t, b)
			r := rec("u", time.Now(), 1)
			if _, err := s.Insert(ctx, []store.Record{r}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s2 := open(t, b) // migrations run again and must be a no-op
			got, err := s2.UserPurchases(ctx, "u", 10)
			if err != nil || len(got) != 1 || got[0].ID != r.ID {
				t.Fatalf("after reopen: %+v %v", got, err)
			}
		})
	}
}

func TestOpenRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"mysql://x/y", "sqlite://", "::not a url"} {
		if _, err := store.Open(context.Background(), u); err == nil {
			t.Errorf("Open(%q) succeeded, want an error", u)
		}
	}
}

func TestOpenUnreachablePostgresSaysSo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := store.Open(ctx, "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2")
	if err == nil || !strings.Contains(err.Error(), "postgres database unreachable") {
		t.Fatalf("err = %v, want it to say the database is unreachable", err)
	}
}

// Two writers whose transactions commit out of the order they took their
// numbers in: writer A inserts first but commits last, writer B inserts
// two purchases after it and commits at once. A reader that pages in
// between, and then pages on from the cursor it was given, must still get
// A's purchase. (With a plain sequence column and no insert lock, B's
// higher numbers are visible first, the cursor passes them, and A's lower
// number lands behind the cursor: lost to everyone paging through. Paging
// by timestamp loses it the same way.)
func TestPagingSeesWritersThatCommitOutOfOrder(t *testing.T) {
	u := storetest.PostgresURL(t)
	if u == "" {
		// Only a bare `go test` gets here: under make test (REQUIRE_REAL_DEPS)
		// PostgresURL fails the test instead of returning "".
		t.Skip("needs PostgreSQL: set TEST_POSTGRES_URL (make test starts a server and sets it); SQLite has one writer at a time, so its commits cannot reorder")
	}
	ctx := context.Background()
	a, b := open(t, storetest.Backend{Name: "postgres", URL: u}), open(t, storetest.Backend{Name: "postgres", URL: u})
	first := rec("before", time.Now(), 1)
	if _, err := b.Insert(ctx, []store.Record{first}); err != nil {
		t.Fatal(err)
	}
	hold, inserted := make(chan struct{}), make(chan struct{})
	store.SetBeforeCommit(a, func() { close(inserted); <-hold })
	recA, recB1, recB2 := rec("writer-a", time.Now(), 1), rec("writer-b", time.Now(), 2), rec("writer-b", time.Now(), 3)
	errs := make(chan error, 3)
	go func() { _, err := a.Insert(ctx, []store.Record{recA}); errs <- err }()
	<-inserted // A has its row (and its number), not yet committed
	go func() {
		for _, r := range []store.Record{recB1, recB2} {
			_, err := b.Insert(ctx, []store.Record{r})
			errs <- err
		}
	}()
	time.Sleep(300 * time.Millisecond) // B commits now, unless it must wait for A

	seen := map[string]bool{}
	page, cur, err := b.Page(ctx, store.Cursor{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range page {
		seen[p.ID] = true
	}
	close(hold)
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Page on from the cursor given (the start again if that page was the
	// last).
	for {
		ps, next, err := b.Page(ctx, cur, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			seen[p.ID] = true
		}
		if next == (store.Cursor{}) {
			break
		}
		cur = next
	}
	for name, r := range map[string]store.Record{"before": first, "A": recA, "B1": recB1, "B2": recB2} {
		if !seen[r.ID] {
			t.Errorf("purchase %s was never returned to the reader paging through", name)
		}
	}
}

// An Idempotency-Key's purchase is decided once: of many concurrent
// claims with different purchases (web server replicas racing), every one
// gets the same answer, the purchase of one of them.
func TestAKeyIsClaimedOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		const n = 16
		answers := make(chan purchase.Purchase, n)
		errs := make(chan error, n)
		for i := range n {
			go func() {
				p := rec("claimer", time.Now(), float64(i+1)).Purchase
				got, err := s.Claim(ctx, "order-1", p)
				answers <- got
				errs <- err
			}()
		}
		var first purchase.Purchase
		for i := range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
			got := <-answers
			if i == 0 {
				first = got
			} else if got != first {
				t.Fatalf("claims of one key answered %+v and %+v", first, got)
			}
		}
		// Another key, or another user's same key, is another claim.
		other := rec("claimer", time.Now(), 999).Purchase
		if got, _ := s.Claim(ctx, "order-2", other); got != other {
			t.Fatalf("a new key answered %+v, want the proposed %+v", got, other)
		}
		elsewhere := rec("someone-else", time.Now(), 5).Purchase
		if got, _ := s.Claim(ctx, "order-1", elsewhere); got != elsewhere {
			t.Fatalf("another user's key answered %+v, want the proposed %+v", got, elsewhere)
		}
	})
}

// Idempotency-Keys are kept for their retention, then let go: within it a
// retry gets the key's first purchase; past it the key can be used for a
// new purchase, and ExpireClaims empties the table of the old ones.
func TestAKeyIsKeptForItsRetentionThenReusable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
		s.SetClock(func() time.Time { return now })
		s.KeyRetention = 24 * time.Hour
		first := rec("keeper", now, 10).Purchase
		if got, err := s.Claim(ctx, "k", first); err != nil || got != first {
			t.Fatalf("first claim: %+v %v", got, err)
		}
		now = now.Add(23 * time.Hour)
		retry := rec("keeper", now, 11).Purchase
		if got, err := s.Claim(ctx, "k", retry); err != nil || got != first {
			t.Fatalf("a retry within the retention got %+v (%v), want the first purchase %+v", got, err, first)
		}
		other := rec("keeper", now, 12).Purchase
		if _, err := s.Claim(ctx, "still-live", other); err != nil {
			t.Fatal(err)
		}
		now = now.Add(2 * time.Hour) // 25 h after the first claim, 2 h after still-live's
		again := rec("keeper", now, 13).Purchase
		if got, err := s.Claim(ctx, "k", again); err != nil || got != again {
			t.Fatalf("the key past its retention got %+v (%v), want it claimed anew for %+v", got, err, again)
		}
		if got, err := s.Claim(ctx, "still-live", rec("keeper", now, 14).Purchase); err != nil || got != other {
			t.Fatalf("a live key got %+v (%v), want its purchase %+v", got, err, other)
		}
		now = now.Add(25 * time.Hour)
		n, err := s.ExpireClaims(ctx)
		if err != nil || n != 2 {
			t.Fatalf("ExpireClaims: %d, %v; want both keys gone", n, err)
		}
	})
}

// A PostgreSQL that takes the connection and never answers (as a dial
// whose SYN is dropped, it gives no error either) must not hold Open: each
// attempt is bounded, so the caller's retry tries again. Found on kind:
// the management API's first dial raced the NetworkPolicy enforcer and
// waited out the kernel's SYN retries, 2 minutes, before its next try.
func TestOpenGivesUpOnAPostgresThatNeverAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, err := store.Open(context.Background(), "postgres://app:secret@"+l.Addr().String()+"/purchases?sslmode=disable")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("Open = %v, want a timeout error", err)
		}
	case <-time.After(4 * store.DefaultConnectTimeout):
		t.Fatalf("Open still waits for a server that never answers after %s", 4*store.DefaultConnectTimeout)
	}
}
