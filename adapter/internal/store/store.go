// Package store keeps the latest values of the metrics HPAs ask for, each
// with its samples' own timestamps. Data flows one way: a source fills the
// store, the API reads it. The API only says what it wants: the first read
// of a key starts a fetch that every concurrent reader joins (one backend
// query however many HPAs ask), and keys read recently are refreshed in
// the background, so later reads are answered from memory. Keys nobody
// asked for in a while are dropped: memory follows the HPAs' questions, not
// the number of series in Prometheus.
package store

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"
)

// Key names one value set: a metric for one namespace (or none) under one
// metric selector.
type Key struct {
	API       string // "custom" or "external"
	Metric    string
	Resource  string // for custom metrics: the group-resource, e.g. "pods"
	Namespace string
	Selector  string // the metric selector, canonical form
}

func (k Key) String() string {
	parts := []string{k.API, k.Metric, k.Resource, k.Namespace, k.Selector}
	return strings.Join(parts, "|")
}

// Sample is one value: for an object (custom metrics) or a label set
// (external metrics), at the time its data was taken.
type Sample struct {
	Object    string            // the object's name, for custom metrics
	Labels    map[string]string // for external metrics
	Value     float64
	Timestamp time.Time
}

// Value is what a fetch produced.
type Value struct {
	Samples   []Sample
	FetchedAt time.Time
	Err       error
}

// Fetcher gets a key's samples from its source.
type Fetcher func(ctx context.Context, k Key) ([]Sample, error)

// Observer is told how lookups went: "hit", "wait" or "fetch".
type Observer func(result string)

// Store is safe for concurrent use.
type Store struct {
	fetch     Fetcher
	fresh     time.Duration // a value younger than this is served without a fetch
	demandTTL time.Duration // keys not read for this long are dropped
	timeout   time.Duration // bound of one fetch
	observe   Observer

	mu      sync.Mutex
	entries map[Key]*entry
}

type entry struct {
	val        Value
	lastWanted time.Time
	inflight   chan struct{} // closed when the running fetch ends
}

// Options configure a Store.
type Options struct {
	// Fresh is how long a fetched value is served as is (also the
	// background refresh period of wanted keys).
	Fresh time.Duration
	// DemandTTL is how long a key is kept refreshed after its last read.
	DemandTTL time.Duration
	// FetchTimeout bounds one fetch.
	FetchTimeout time.Duration
	Observe      Observer
}

// New returns a store that fills itself with fetch.
func New(fetch Fetcher, o Options) *Store {
	if o.Fresh == 0 {
		o.Fresh = 5 * time.Second
	}
	if o.DemandTTL == 0 {
		o.DemandTTL = 10 * time.Minute
	}
	if o.FetchTimeout == 0 {
		o.FetchTimeout = 10 * time.Second
	}
	if o.Observe == nil {
		o.Observe = func(string) {}
	}
	return &Store{fetch: fetch, fresh: o.Fresh, demandTTL: o.DemandTTL, timeout: o.FetchTimeout, observe: o.Observe, entries: map[Key]*entry{}}
}

// Get returns the key's value, fetching it first if the store has none
// fresh. Concurrent Gets of one key share one fetch.
func (s *Store) Get(ctx context.Context, k Key) (Value, error) {
	s.mu.Lock()
	e, ok := s.entries[k]
	if !ok {
		e = &entry{}
		s.entries[k] = e
	}
	e.lastWanted = time.Now()
	if !e.val.FetchedAt.IsZero() && time.Since(e.val.FetchedAt) < s.fresh {
		v := e.val
		s.mu.Unlock()
		s.observe("hit")
		return v, nil
	}
	wait := e.inflight
	if wait == nil {
		wait = s.startFetch(k, e)
		s.observe("fetch")
	} else {
		s.observe("wait")
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

// startFetch runs a fetch for k; s.mu must be held.
func (s *Store) startFetch(k Key, e *entry) chan struct{} {
	done := make(chan struct{})
	e.inflight = done
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		samples, err := s.fetch(ctx, k)
		s.mu.Lock()
		e.val = Value{Samples: samples, FetchedAt: time.Now(), Err: err}
		e.inflight = nil
		s.mu.Unlock()
		close(done)
	}()
	return done
}

// Run refreshes wanted keys before they go stale and drops unwanted ones,
// until ctx ends.
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
			}
			continue
		}
		// Refresh shortly before the value stops being fresh, so a reader
		// at the HPA's period finds it in memory.
		if e.inflight == nil && now.Sub(e.val.FetchedAt) > s.fresh*3/4 {
			s.startFetch(k, e)
		}
	}
}

// Reset drops every value (after the rules changed, old keys may mean
// something else).
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = map[Key]*entry{}
}

// Len is the number of keys kept.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// Keys lists the kept keys, for debugging.
func (s *Store) Keys() []Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Key, 0, len(s.entries))
	for k := range s.entries {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
