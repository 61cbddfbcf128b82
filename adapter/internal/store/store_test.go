package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// query is a test query: its key is its name.
type query string

func (q query) Key() string { return string(q) }

var key = query("custom|m|pods|ns")

// countingFetcher counts fetches and can be held until released.
type countingFetcher struct {
	calls   atomic.Int64
	release chan struct{}
	err     error
}

func (f *countingFetcher) Fetch(ctx context.Context, q store.Query) ([]store.Sample, error) {
	n := f.calls.Add(1)
	if f.release != nil {
		<-f.release
	}
	return []store.Sample{{Object: "p", Value: float64(n), Timestamp: time.Now()}}, f.err
}

func TestConcurrentReadersShareOneFetch(t *testing.T) {
	f := &countingFetcher{release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	s := store.New(f, store.Options{Fresh: time.Minute, Metrics: store.NewMetrics(reg)})
	var wg sync.WaitGroup
	results := make(chan float64, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := s.Get(context.Background(), key)
			if err != nil {
				t.Error(err)
				return
			}
			results <- v.Samples[0].Value
		}()
	}
	time.Sleep(50 * time.Millisecond) // all 50 are waiting on the held fetch
	close(f.release)
	wg.Wait()
	close(results)
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d backend fetches for 50 concurrent identical reads, want 1", n)
	}
	for v := range results {
		if v != 1 {
			t.Fatalf("a reader got value %v, want the one fetch's 1", v)
		}
	}
	// Fresh now: further reads are hits.
	if _, err := s.Get(context.Background(), key); err != nil || f.calls.Load() != 1 {
		t.Fatalf("read of a fresh value fetched again (calls %d, err %v)", f.calls.Load(), err)
	}
	want := `
# HELP adapter_store_lookups_total Reads of the value store: hit (fresh value), wait (joined a running fetch), fetch (started one), refused (too many distinct queries).
# TYPE adapter_store_lookups_total counter
adapter_store_lookups_total{result="fetch"} 1
adapter_store_lookups_total{result="hit"} 1
adapter_store_lookups_total{result="refused"} 0
adapter_store_lookups_total{result="wait"} 49
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "adapter_store_lookups_total"); err != nil {
		t.Fatal(err)
	}
}

func TestStaleValueIsFetchedAgain(t *testing.T) {
	f := &countingFetcher{}
	s := store.New(f, store.Options{Fresh: 20 * time.Millisecond})
	v1, _ := s.Get(context.Background(), key)
	time.Sleep(30 * time.Millisecond)
	v2, _ := s.Get(context.Background(), key)
	if f.calls.Load() != 2 || v2.Samples[0].Value != 2 || !v2.FetchedAt.After(v1.FetchedAt) {
		t.Fatalf("calls %d, values %v then %v", f.calls.Load(), v1.Samples[0].Value, v2.Samples[0].Value)
	}
}

func TestFetchErrorsReachTheReader(t *testing.T) {
	f := &countingFetcher{err: errors.New("prometheus at http://x: connection refused")}
	s := store.New(f, store.Options{Fresh: time.Minute})
	v, err := s.Get(context.Background(), key)
	if err != nil || v.Err == nil || v.Err.Error() != "prometheus at http://x: connection refused" {
		t.Fatalf("value %+v, err %v: the fetch error must be returned, not hidden", v, err)
	}
}

func TestWantedKeysAreRefreshedAndUnwantedOnesDropped(t *testing.T) {
	f := &countingFetcher{}
	s := store.New(f, store.Options{Fresh: 40 * time.Millisecond, DemandTTL: 150 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	if _, err := s.Get(ctx, key); err != nil {
		t.Fatal(err)
	}
	time.Sleep(120 * time.Millisecond)
	if n := f.calls.Load(); n < 2 {
		t.Fatalf("a wanted key was fetched %d times in 3 fresh periods, want background refreshes", n)
	}
	// A read now is served from memory: the refresh kept it fresh.
	before := f.calls.Load()
	v, _ := s.Get(ctx, key)
	if time.Since(v.FetchedAt) > 40*time.Millisecond || f.calls.Load() != before {
		t.Fatalf("read after refreshes fetched (calls %d -> %d) or was stale (%s)", before, f.calls.Load(), time.Since(v.FetchedAt))
	}
	time.Sleep(400 * time.Millisecond) // longer than DemandTTL without a read
	if s.Len() != 0 {
		t.Fatalf("%d keys kept after nobody asked for %s: memory must follow demand", s.Len(), 400*time.Millisecond)
	}
	settled := f.calls.Load()
	time.Sleep(100 * time.Millisecond)
	if f.calls.Load() != settled {
		t.Fatal("a dropped key is still being refreshed")
	}
}

func TestReaderContextEndsTheWaitNotTheFetch(t *testing.T) {
	f := &countingFetcher{release: make(chan struct{})}
	s := store.New(f, store.Options{Fresh: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Get(ctx, key); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the reader's deadline", err)
	}
	close(f.release)
	v, err := s.Get(context.Background(), key)
	if err != nil || len(v.Samples) != 1 || f.calls.Load() != 1 {
		t.Fatalf("the fetch should have finished for the next reader: %+v %v calls=%d", v, err, f.calls.Load())
	}
}

// Past MaxQueries a new query is refused with a clear error; queries
// already kept are still served.
func TestDistinctQueriesAreBounded(t *testing.T) {
	f := &countingFetcher{}
	s := store.New(f, store.Options{Fresh: time.Minute, MaxQueries: 3, NamespaceFloor: -1})
	for i := range 3 {
		if _, err := s.Get(context.Background(), query(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Get(context.Background(), query("one too many"))
	if !errors.Is(err, store.ErrTooManyQueries) || !strings.Contains(err.Error(), "at most 3") {
		t.Fatalf("err = %v, want ErrTooManyQueries naming the limit", err)
	}
	if _, err := s.Get(context.Background(), query("1")); err != nil {
		t.Fatalf("a kept query: %v", err)
	}
	if s.Len() != 3 {
		t.Fatalf("%d queries kept, want 3", s.Len())
	}
}

// One namespace cannot deny the others: a noisy namespace that asks for
// ever new selectors (easiest right after a reload empties the store)
// stops at its own bound, and a quiet namespace still gets its floor of new
// queries with the store full.
func TestANoisyNamespaceCannotDenyAQuietOne(t *testing.T) {
	f := &countingFetcher{}
	s := store.New(f, store.Options{Fresh: time.Minute, MaxQueries: 10, MaxPerNamespace: 8, NamespaceFloor: 2, MaxInFlight: 100})
	ctx := context.Background()
	refused := 0
	for i := range 50 {
		_, err := s.Get(ctx, store.InNamespace("noisy", query(fmt.Sprint("noisy-", i))))
		if errors.Is(err, store.ErrTooManyQueries) {
			refused++
			if !strings.Contains(err.Error(), `namespace "noisy"`) {
				t.Fatalf("refusal does not name the namespace: %v", err)
			}
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if refused != 42 {
		t.Fatalf("noisy namespace: %d of 50 refused, want 42 (8 kept: its bound)", refused)
	}
	// Another namespace fills the rest of the store...
	for i := range 2 {
		if _, err := s.Get(ctx, store.InNamespace("busy", query(fmt.Sprint("busy-", i)))); err != nil {
			t.Fatal(err)
		}
	}
	// ...and a quiet one still gets its floor.
	for i := range 2 {
		if _, err := s.Get(ctx, store.InNamespace("quiet", query(fmt.Sprint("quiet-", i)))); err != nil {
			t.Fatalf("quiet namespace's query %d refused with the store full: %v", i, err)
		}
	}
	if _, err := s.Get(ctx, store.InNamespace("quiet", query("quiet-past-floor"))); !errors.Is(err, store.ErrTooManyQueries) {
		t.Fatalf("past its floor with the store full: %v, want ErrTooManyQueries", err)
	}
	if s.Len() != 12 {
		t.Fatalf("%d queries kept, want 12 (10 + the quiet namespace's floor)", s.Len())
	}
}

// blockingFetcher's fetches wait for release; peak is the most that ran
// at once.
func blockingFetcher(release chan struct{}) (store.Fetcher, *atomic.Int64) {
	var running, peak atomic.Int64
	return store.FetcherFunc(func(ctx context.Context, q store.Query) ([]store.Sample, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return nil, nil
	}), &peak
}

// At most MaxInFlight fetches run at once, however many queries wait.
func TestFetchesInFlightAreBounded(t *testing.T) {
	release := make(chan struct{})
	f, peak := blockingFetcher(release)
	s := store.New(f, store.Options{Fresh: time.Minute, MaxInFlight: 4, MaxInFlightPerNamespace: 4, FetchTimeout: 10 * time.Second})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = s.Get(context.Background(), query(fmt.Sprint(i))) }()
	}
	time.Sleep(100 * time.Millisecond)
	if p := peak.Load(); p != 4 {
		t.Fatalf("%d fetches ran at once, want 4", p)
	}
	close(release)
	wg.Wait()
}

type coalescing struct{ query }

func (coalescing) Coalesces() bool { return true }

// A source that gathers concurrent fetches into one round (Kafka lag)
// gets them all at once: the fetch slots would cap a round at
// MaxInFlight, and fetches of other queries still wait for slots.
func TestCoalescingQueriesAreNotCappedBySlots(t *testing.T) {
	release := make(chan struct{})
	f, peak := blockingFetcher(release)
	s := store.New(f, store.Options{Fresh: time.Minute, MaxInFlight: 4, MaxInFlightPerNamespace: 4, FetchTimeout: 10 * time.Second})
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = s.Get(context.Background(), coalescing{query(fmt.Sprint("lag-", i))})
		}()
	}
	for i := range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = s.Get(context.Background(), query(fmt.Sprint(i))) }()
	}
	time.Sleep(200 * time.Millisecond)
	if p := peak.Load(); p != 54 {
		t.Fatalf("%d fetches ran at once, want 54 (the 50 coalescing ones and 4 slots)", p)
	}
	close(release)
	wg.Wait()
}

// A rules reload empties the store; it must give back what each
// namespace was charged, or every reload charges the namespace's queries
// again and, a few reloads on, its HPAs get "too many queries" for good.
func TestReloadsGiveBackWhatEachNamespaceWasCharged(t *testing.T) {
	f := &countingFetcher{}
	s := store.New(f, store.Options{Fresh: time.Minute, MaxQueries: 100, MaxPerNamespace: 2, NamespaceFloor: -1})
	ctx := context.Background()
	for reload := range 5 {
		for _, q := range []query{"web", "consumer"} {
			if _, err := s.Get(ctx, store.InNamespace("shop", q)); err != nil {
				t.Fatalf("after %d reloads, the namespace's query %s: %v", reload, q, err)
			}
		}
		s.Reset()
	}
}

// A namespace whose fetches are slow holds at most its share of the fetch
// slots: a quiet namespace's fetch still runs at once.
func TestANamespaceCannotHoldEveryFetchSlot(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var quietRan atomic.Bool
	f := store.FetcherFunc(func(ctx context.Context, q store.Query) ([]store.Sample, error) {
		if strings.HasPrefix(string(q.(query)), "quiet") {
			quietRan.Store(true)
			return []store.Sample{{Object: "p", Value: 1, Timestamp: time.Now()}}, nil
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, ctx.Err()
	})
	s := store.New(f, store.Options{Fresh: time.Minute, MaxInFlight: 4, FetchTimeout: 5 * time.Second, MaxQueries: 100, NamespaceFloor: -1})
	ctx := context.Background()
	for i := range 8 {
		go func() { _, _ = s.Get(ctx, store.InNamespace("noisy", query(fmt.Sprint("noisy-", i)))) }()
	}
	time.Sleep(200 * time.Millisecond) // the noisy fetches take what they may
	// Well before the noisy fetches time out and give their slots back.
	quick, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	got, err := s.Get(quick, store.InNamespace("quiet", query("quiet-1")))
	if err != nil || !quietRan.Load() || len(got.Samples) != 1 {
		t.Fatalf("the quiet namespace's fetch beside 8 slow ones of another: %v (ran %v): the noisy namespace held every slot", err, quietRan.Load())
	}
}
