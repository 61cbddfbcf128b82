package lag

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// span is a stretch of a partition to count records in: [from, to).
type span struct {
	topic     string
	partition int32
	from, to  int64
}

// consumable holds, per partition, the offsets of the records a
// read_committed consumer gets.
type consumable map[tpKey][]int64

// between counts the records at offsets in [from, to).
func (c consumable) between(k tpKey, from, to int64) int64 {
	var n int64
	for _, off := range c[k] {
		if off >= from && off < to {
			n++
		}
	}
	return n
}

// countConsumable reads the spans with read_committed, all partitions at
// once, with the source's own client, and returns the offsets of the
// records a consumer gets in them. Spans of one partition (several groups
// on one topic) are read as one, from the lowest start to the highest end.
//
// The client keeps control records (transaction markers), so a span that
// ends with a marker is seen to end; aborted records are dropped by the
// client. A span not read to its end within the deadline is an error.
func (s *Source) countConsumable(ctx context.Context, spans []span) (consumable, error) {
	s.readerMu.Lock()
	defer s.readerMu.Unlock()
	t0 := time.Now()
	type window struct{ from, to int64 }
	windows := map[tpKey]window{}
	for _, sp := range spans {
		k := tpKey{sp.topic, sp.partition}
		w, ok := windows[k]
		if !ok {
			w = window{sp.from, sp.to}
		}
		w.from, w.to = min(w.from, sp.from), max(w.to, sp.to)
		windows[k] = w
	}
	add := map[string]map[int32]kgo.Offset{}
	remove := map[string][]int32{}
	for k, w := range windows {
		if add[k.topic] == nil {
			add[k.topic] = map[int32]kgo.Offset{}
		}
		add[k.topic][k.partition] = kgo.NewOffset().At(w.from)
		remove[k.topic] = append(remove[k.topic], k.partition)
	}
	s.cl.AddConsumePartitions(add)
	defer s.cl.RemoveConsumePartitions(remove)

	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out := consumable{}
	left := len(windows)
	done := map[tpKey]bool{}
	var err error
	for left > 0 && err == nil {
		fetches := s.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			err = fmt.Errorf("%d partitions not read to their end within the deadline", left)
			break
		}
		fetches.EachError(func(topic string, p int32, e error) {
			if _, ok := windows[tpKey{topic, p}]; ok && err == nil {
				err = fmt.Errorf("%s[%d]: %w", topic, p, e)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			k := tpKey{r.Topic, r.Partition}
			w, ok := windows[k]
			if !ok || done[k] || r.Offset < w.from {
				return
			}
			if r.Offset < w.to && !r.Attrs.IsControl() {
				out[k] = append(out[k], r.Offset)
			}
			if r.Offset >= w.to-1 {
				done[k] = true
				left--
			}
		})
	}
	s.obs.Observe("marker_check", t0, err)
	return out, err
}
