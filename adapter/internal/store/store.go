// Package store keeps the latest values of the metrics HPAs ask for, each
// with its samples' own timestamps. Data flows one way: sources fill the
// store, the API reads it. The API only says what it wants, as a typed
// Query: the first read of a query starts a fetch that every concurrent
// reader joins (one backend query however many HPAs ask), and queries read
// recently are refreshed in the background, so later reads are answered
// from memory. Queries nobody asked for in a while are dropped: memory
// follows the HPAs' questions, not the number of series in Prometheus. The
// number of queries kept and of fetches running at once are bounded, so
// whoever may create HPAs cannot make the adapter hold or fetch without
// limit.
package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Query is a typed description of what to fetch (which the source
// understands without parsing anything again). Queries with one Key are
// one value.
type Query interface {
	Key() string
}

// Coalescing is implemented by queries whose source gathers concurrent
// fetches into shared backend requests and bounds its own load (the Kafka
// lag source reads every waiting group in one round): their fetches take
// no MaxInFlight slot, which would cap what one round can gather.
type Coalescing interface {
	Query
	Coalesces() bool
}

// Sample is one value: for an object (custom metrics) or a label set
// (external metrics), at the time its data was taken.
type Sample struct {
	Object string            // the object's name, for custom metrics
	Labels map[string]string // for external metrics
	// Metric names the metric the sample is of when one fetch yields
	// several (a consumer group's lag and its lag in seconds come from one
	// computation); empty otherwise.
	Metric    string
	Value     float64
	Timestamp time.Time
}

// Value is what a fetch produced.
type Value struct {
	Samples   []Sample
	FetchedAt time.Time
	Err       error
}

// Fetcher gets a query's samples from its source.
type Fetcher interface {
	Fetch(ctx context.Context, q Query) ([]Sample, error)
}

// FetcherFunc adapts a function to Fetcher.
type FetcherFunc func(ctx context.Context, q Query) ([]Sample, error)

// Fetch calls f.
func (f FetcherFunc) Fetch(ctx context.Context, q Query) ([]Sample, error) { return f(ctx, q) }

// ErrTooManyQueries is returned for a new query once MaxQueries are kept
// (or its namespace holds MaxPerNamespace).
var ErrTooManyQueries = errors.New("too many distinct metric queries")

// InNamespace charges q to namespace ns's budget (the namespace of the
// request that first asks for it); the store fetches q itself.
func InNamespace(ns string, q Query) Query { return charged{Query: q, ns: ns} }

type charged struct {
	Query
	ns string
}

// Store is safe for concurrent use.
type Store struct {
	fetcher   Fetcher
	fresh     time.Duration
	demandTTL time.Duration
	timeout   time.Duration
	maxKeys   int
	maxPerNS  int
	floorNS   int
	slots     chan struct{} // one per fetch allowed to run
	nsSlots   int           // of those, how many one namespace's fetches may hold
	metrics   *Metrics

	mu       sync.Mutex
	entries  map[string]*entry
	perNS    map[string]int           // entries charged to each namespace
	nsFetchs map[string]chan struct{} // each namespace's share of the slots
}

type entry struct {
	query      Query
	ns         string
	val        Value
	lastWanted time.Time
	inflight   chan struct{} // closed when the running fetch ends
}

// Options configure a Store.
type Options struct {
	// Fresh is how long a fetched value is served as is (also the
	// background refresh period of wanted queries).
	Fresh time.Duration
	// DemandTTL is how long a query is kept refreshed after its last read.
	DemandTTL time.Duration
	// FetchTimeout bounds one fetch.
	FetchTimeout time.Duration
	// MaxQueries bounds the distinct queries kept (default 1,000).
	MaxQueries int
	// MaxPerNamespace bounds the queries one namespace may have kept
	// (default MaxQueries; the adapter sets a quarter): one namespace
	// cannot fill the store.
	MaxPerNamespace int
	// NamespaceFloor is how many queries every namespace may add even when
	// MaxQueries are kept (default 20): a noisy namespace cannot deny a
	// quiet one its HPAs. The store then holds at most MaxQueries plus
	// NamespaceFloor per namespace that asks. Negative: no floor.
	NamespaceFloor int
	// MaxInFlight bounds the fetches running at once (default 16); more
	// wait for a slot.
	MaxInFlight int
	// MaxInFlightPerNamespace bounds the fetches of one namespace's
	// queries running at once (default a quarter of MaxInFlight, at least
	// 1): a namespace whose queries are slow cannot hold every slot while
	// a quiet namespace's HPAs wait.
	MaxInFlightPerNamespace int
	// Metrics, if set, are updated (see NewMetrics).
	Metrics *Metrics
}

// New returns a store that fills itself from f.
func New(f Fetcher, o Options) *Store {
	if o.Fresh == 0 {
		o.Fresh = 5 * time.Second
	}
	if o.DemandTTL == 0 {
		o.DemandTTL = 10 * time.Minute
	}
	if o.FetchTimeout == 0 {
		o.FetchTimeout = 10 * time.Second
	}
	if o.MaxQueries == 0 {
		o.MaxQueries = 1000
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 16
	}
	if o.MaxPerNamespace == 0 {
		o.MaxPerNamespace = o.MaxQueries
	}
	if o.MaxInFlightPerNamespace <= 0 {
		o.MaxInFlightPerNamespace = max(o.MaxInFlight/4, 1)
	}
	switch {
	case o.NamespaceFloor == 0:
		o.NamespaceFloor = 20
	case o.NamespaceFloor < 0:
		o.NamespaceFloor = 0 // no floor
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	return &Store{fetcher: f, fresh: o.Fresh, demandTTL: o.DemandTTL, timeout: o.FetchTimeout, maxKeys: o.MaxQueries,
		maxPerNS: o.MaxPerNamespace, floorNS: o.NamespaceFloor,
		slots: make(chan struct{}, o.MaxInFlight), nsSlots: min(o.MaxInFlightPerNamespace, o.MaxInFlight), metrics: o.Metrics,
		entries: map[string]*entry{}, perNS: map[string]int{}, nsFetchs: map[string]chan struct{}{}}
}

// Get returns the query's value, fetching it first if the store has none
// fresh. Concurrent Gets of one query share one fetch.
func (s *Store) Get(ctx context.Context, q Query) (Value, error) {
	ns := ""
	if c, ok := q.(charged); ok {
		q, ns = c.Query, c.ns
	}
	k := q.Key()
	s.mu.Lock()
	e, ok := s.entries[k]
	if !ok {
		if err := s.admit(ns); err != nil {
			s.mu.Unlock()
			s.metrics.lookups.WithLabelValues("refused").Inc()
			return Value{}, err
		}
		e = &entry{query: q, ns: ns}
		s.entries[k] = e
		s.perNS[ns]++
		s.metrics.keys.Set(float64(len(s.entries)))
	}
	e.lastWanted = time.Now()
	if !e.val.FetchedAt.IsZero() && time.Since(e.val.FetchedAt) < s.fresh {
		v := e.val
		s.mu.Unlock()
		s.metrics.lookups.WithLabelValues("hit").Inc()
		return v, nil
	}
	wait := e.inflight
	if wait == nil {
		wait = s.startFetch(e)
		s.metrics.lookups.WithLabelValues("fetch").Inc()
	} else {
		s.metrics.lookups.WithLabelValues("wait").Inc()
	}
	s.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return Value{}, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.val, nil
}

// admit decides whether namespace ns may add a query; s.mu must be held.
// Below its floor a namespace always may; above it, only while the store
// and the namespace are under their bounds.
func (s *Store) admit(ns string) error {
	n := s.perNS[ns]
	if n < s.floorNS {
		return nil
	}
	if len(s.entries) >= s.maxKeys {
		return fmt.Errorf("%w: the adapter keeps at most %d (--max-store-queries), each refreshed while HPAs ask for it, and namespace %q is past its floor of %d; this one is new", ErrTooManyQueries, s.maxKeys, ns, s.floorNS)
	}
	if n >= s.maxPerNS {
		return fmt.Errorf("%w: namespace %q has %d kept, the most one namespace may (--max-store-queries-per-namespace); this one is new", ErrTooManyQueries, ns, n)
	}
	return nil
}

// Peek returns the query's value as stored, without fetching or counting
// as demand (for explaining what is served).
func (s *Store) Peek(q Query) (Value, bool) {
	if c, ok := q.(charged); ok {
		q = c.Query
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[q.Key()]
	if !ok || e.val.FetchedAt.IsZero() {
		return Value{}, false
	}
	return e.val, true
}

// startFetch runs a fetch for e in the background; s.mu must be held. The
// fetch waits for a slot of its namespace's share first, then for one of
// the store's: at most MaxInFlightPerNamespace of one namespace's and
// MaxInFlight in all run at once.
func (s *Store) startFetch(e *entry) chan struct{} {
	done := make(chan struct{})
	e.inflight = done
	q := e.query
	share, ok := s.nsFetchs[e.ns]
	if !ok {
		share = make(chan struct{}, s.nsSlots)
		s.nsFetchs[e.ns] = share
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		var samples []Sample
		var err error
		if c, ok := q.(Coalescing); ok && c.Coalesces() {
			samples, err = s.fetcher.Fetch(ctx, q)
			s.finish(e, done, samples, err)
			return
		}
		select {
		case share <- struct{}{}:
			select {
			case s.slots <- struct{}{}:
				s.metrics.inflight.Inc()
				samples, err = s.fetcher.Fetch(ctx, q)
				s.metrics.inflight.Dec()
				<-s.slots
			case <-ctx.Done():
				err = fmt.Errorf("no fetch slot free within %s: %d fetches already running", s.timeout, cap(s.slots))
			}
			<-share
		case <-ctx.Done():
			err = fmt.Errorf("no fetch slot free within %s: namespace %q already has %d fetches running, its share (--max-fetches-in-flight-per-namespace)", s.timeout, e.ns, cap(share))
		}
		s.finish(e, done, samples, err)
	}()
	return done
}

// finish stores a fetch's result and wakes its waiters.
func (s *Store) finish(e *entry, done chan struct{}, samples []Sample, err error) {
	s.mu.Lock()
	e.val = Value{Samples: samples, FetchedAt: time.Now(), Err: err}
	e.inflight = nil
	s.mu.Unlock()
	close(done)
}

// Run refreshes wanted queries before they go stale and drops unwanted
// ones, until ctx ends.
func (s *Store) Run(ctx context.Context) {
	tick := time.NewTicker(max(s.fresh/4, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.sweep()
		}
	}
}

func (s *Store) sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for k, e := range s.entries {
		if now.Sub(e.lastWanted) > s.demandTTL {
			if e.inflight == nil {
				delete(s.entries, k)
				if s.perNS[e.ns]--; s.perNS[e.ns] <= 0 {
					delete(s.perNS, e.ns)
				}
			}
			continue
		}
		// Refresh shortly before the value stops being fresh, so a reader
		// at the HPA's period finds it in memory.
		if e.inflight == nil && now.Sub(e.val.FetchedAt) > s.fresh*3/4 {
			s.startFetch(e)
		}
	}
	s.metrics.keys.Set(float64(len(s.entries)))
}

// Reset drops every value (after the rules changed, old queries may mean
// something else), and with them what each namespace was charged: a
// namespace's budget is what it has kept now, not what it asked for
// under every earlier set of rules.
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = map[string]*entry{}
	s.perNS = map[string]int{}
	s.metrics.keys.Set(0)
}

// Len is the number of queries kept.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// Keys lists the kept queries' keys, for debugging.
func (s *Store) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.entries))
	for k := range s.entries {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
