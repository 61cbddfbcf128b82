// Package lag computes Kafka consumer group lag. The arithmetic is a pure
// function over what was fetched (Calculate), covered edge case by edge
// case by table tests; the I/O is in the Kafka source (kafka.go).
package lag

import (
	"fmt"
	"sort"
	"time"
)

// NoOffset marks a partition the group never committed.
const NoOffset int64 = -1

// Partition is what was fetched about one partition.
type Partition struct {
	Topic     string
	Partition int32
	// Start is the earliest offset still retained (log start offset).
	Start int64
	// End is the offset a read_committed consumer can read up to: the last
	// stable offset. For non-transactional topics it equals the high
	// watermark; for transactional ones it stops before open transactions
	// and lets commit markers count as consumed.
	End int64
	// Committed is the group's committed offset, or NoOffset.
	Committed int64
	// Consumable, when measured, is how many records a read_committed
	// consumer gets between Committed and End. It differs from
	// End-Committed by the transaction markers (and aborted records) in
	// between: a consumer that commits "last record + 1" after a
	// transaction stops just before the commit marker, and without this
	// the lag would read 1 forever (KEDA #5675).
	Consumable *int64
}

// PartitionLag is one partition's lag and how it was reckoned.
type PartitionLag struct {
	Partition
	Lag int64
	// Reason says which case applied: "committed", "uncommitted" (never
	// committed: every retained message counts), "truncated" (retention
	// deleted messages past the commit), "clamped" (committed past the
	// end: 0, never negative).
	Reason string
}

// Calculate returns each partition's lag:
//
//	committed:   end - committed
//	uncommitted: end - start: the messages still retained, not the whole
//	             offset (which would count messages retention deleted)
//	truncated:   committed < start: end - start, for the same reason
//	clamped:     committed > end (end offsets fetched a moment before the
//	             commit, or a stale LSO): 0
//	markers:     the records between committed and end were counted and
//	             some are transaction markers: only the consumable count
func Calculate(parts []Partition) []PartitionLag {
	out := make([]PartitionLag, 0, len(parts))
	for _, p := range parts {
		pl := PartitionLag{Partition: p}
		switch {
		case p.Committed == NoOffset || p.Committed < 0:
			pl.Lag, pl.Reason = p.End-p.Start, "uncommitted"
		case p.Committed < p.Start:
			pl.Lag, pl.Reason = p.End-p.Start, "truncated"
		case p.Committed > p.End:
			pl.Lag, pl.Reason = 0, "clamped"
		case p.Consumable != nil && *p.Consumable < p.End-p.Committed:
			pl.Lag, pl.Reason = *p.Consumable, "markers"
		default:
			pl.Lag, pl.Reason = p.End-p.Committed, "committed"
		}
		if pl.Lag < 0 {
			pl.Lag = 0
		}
		out = append(out, pl)
	}
	return out
}

// TopicLag is a group's lag summed over one topic's partitions.
type TopicLag struct {
	Group, Topic string
	Lag          int64
	// Committed sums the committed offsets (uncommitted partitions count
	// their start): its growth over time is the group's consumption rate.
	Committed  int64
	Partitions int
	// PartitionsWithLag counts the partitions whose lag is above 0.
	PartitionsWithLag int
}

// ByTopic sums partition lags per topic, sorted by topic.
func ByTopic(group string, lags []PartitionLag) []TopicLag {
	m := map[string]*TopicLag{}
	for _, l := range lags {
		t, ok := m[l.Topic]
		if !ok {
			t = &TopicLag{Group: group, Topic: l.Topic}
			m[l.Topic] = t
		}
		t.Lag += l.Lag
		t.Partitions++
		if l.Lag > 0 {
			t.PartitionsWithLag++
		}
		if l.Committed >= 0 {
			t.Committed += l.Committed
		} else {
			t.Committed += l.Start
		}
	}
	out := make([]TopicLag, 0, len(m))
	for _, t := range m {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Topic < out[j].Topic })
	return out
}

// Rate estimates a group's consumption rate on a topic from the committed
// offsets seen over time.
type Rate struct {
	Window  time.Duration
	samples []rateSample
}

type rateSample struct {
	at        time.Time
	committed int64
}

// Observe records the committed sum at a time.
func (r *Rate) Observe(at time.Time, committed int64) {
	if n := len(r.samples); n > 0 && committed < r.samples[n-1].committed {
		// Offsets went back (a reset): history before it says nothing.
		r.samples = r.samples[:0]
	}
	r.samples = append(r.samples, rateSample{at, committed})
	cut := 0
	for cut < len(r.samples)-2 && at.Sub(r.samples[cut].at) > r.Window {
		cut++
	}
	r.samples = r.samples[cut:]
}

// PerSecond is messages consumed per second over the window, and whether
// there is enough history (two samples at least a second apart).
func (r *Rate) PerSecond() (float64, bool) {
	if len(r.samples) < 2 {
		return 0, false
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	dt := last.at.Sub(first.at).Seconds()
	if dt < 1 {
		return 0, false
	}
	return float64(last.committed-first.committed) / dt, true
}

// DrainSeconds is the estimated time for the group to consume lag at
// rate: 0 with no lag; capped (a stalled group with lag has "forever" to
// go, which the HPA must see as large, not as missing).
func DrainSeconds(lag int64, perSecond float64, cap float64) float64 {
	if lag <= 0 {
		return 0
	}
	if perSecond <= 0 {
		return cap
	}
	return min(float64(lag)/perSecond, cap)
}

// Error is a lag that cannot be known: the HPA must see an error and hold,
// never a 0.
type Error struct {
	Group string
	Cause error
}

func (e *Error) Error() string {
	return fmt.Sprintf("kafka lag of consumer group %q: %v", e.Group, e.Cause)
}

func (e *Error) Unwrap() error { return e.Cause }
