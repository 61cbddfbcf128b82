package lag_test

import (
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
)

func TestCalculate(t *testing.T) {
	tests := []struct {
		name       string
		p          lag.Partition
		want       int64
		wantReason string
	}{
		{"committed behind the end", lag.Partition{Start: 0, End: 100, Committed: 60}, 40, "committed"},
		{"caught up", lag.Partition{Start: 0, End: 100, Committed: 100}, 0, "committed"},
		// KEDA counts the whole offset (500) here, messages retention
		// deleted long ago included.
		{"never committed: retained messages only", lag.Partition{Start: 400, End: 500, Committed: lag.NoOffset}, 100, "uncommitted"},
		{"never committed, empty", lag.Partition{Start: 7, End: 7, Committed: lag.NoOffset}, 0, "uncommitted"},
		{"retention deleted past the commit", lag.Partition{Start: 300, End: 500, Committed: 100}, 200, "truncated"},
		// A transactional topic: 10 records and the commit marker at offset
		// 10. The consumer committed "last record + 1" = 10, the end is 11:
		// counted records, not offsets, so the marker is no lag.
		{"transactional, marker after the last record", lag.Partition{Start: 0, End: 11, Committed: 10, Consumable: ptr(0)}, 0, "markers"},
		{"transactional, one record and a marker left", lag.Partition{Start: 0, End: 13, Committed: 10, Consumable: ptr(1)}, 1, "markers"},
		{"counted and no markers", lag.Partition{Start: 0, End: 13, Committed: 10, Consumable: ptr(3)}, 3, "committed"},
		{"commit ahead of the end: clamped, never negative", lag.Partition{Start: 0, End: 90, Committed: 95}, 0, "clamped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := lag.Calculate([]lag.Partition{tt.p})
			if len(got) != 1 || got[0].Lag != tt.want || got[0].Reason != tt.wantReason {
				t.Fatalf("= %+v, want lag %d (%s)", got, tt.want, tt.wantReason)
			}
		})
	}
}

func ptr(n int64) *int64 { return &n }

func TestPartitionsAddedCountTheirMessages(t *testing.T) {
	// Partitions 3 and 4 were added after the group last committed: they
	// have no commit, and their messages are lag.
	parts := []lag.Partition{
		{Topic: "purchases", Partition: 0, Start: 0, End: 50, Committed: 50},
		{Topic: "purchases", Partition: 1, Start: 0, End: 40, Committed: 30},
		{Topic: "purchases", Partition: 2, Start: 0, End: 45, Committed: 45},
		{Topic: "purchases", Partition: 3, Start: 0, End: 7, Committed: lag.NoOffset},
		{Topic: "purchases", Partition: 4, Start: 0, End: 0, Committed: lag.NoOffset},
		{Topic: "other", Partition: 0, Start: 10, End: 20, Committed: 15},
	}
	byTopic := lag.ByTopic("g", lag.Calculate(parts))
	if len(byTopic) != 2 {
		t.Fatalf("%+v", byTopic)
	}
	other, purchases := byTopic[0], byTopic[1]
	if purchases.Topic != "purchases" || purchases.Lag != 17 || purchases.Partitions != 5 || purchases.Committed != 125 {
		t.Fatalf("purchases = %+v, want lag 10+7=17 over 5 partitions, committed 125", purchases)
	}
	if other.Lag != 5 || other.Group != "g" {
		t.Fatalf("other = %+v", other)
	}
}

func TestRateAndDrainSeconds(t *testing.T) {
	r := lag.Rate{Window: time.Minute}
	t0 := time.Unix(1000, 0)
	if _, ok := r.PerSecond(); ok {
		t.Fatal("rate known with no samples")
	}
	r.Observe(t0, 1000)
	if _, ok := r.PerSecond(); ok {
		t.Fatal("rate known with one sample")
	}
	r.Observe(t0.Add(10*time.Second), 1500)
	r.Observe(t0.Add(20*time.Second), 3000)
	if v, ok := r.PerSecond(); !ok || v != 100 {
		t.Fatalf("rate = %v %v, want 100/s over 20 s", v, ok)
	}
	// Samples older than the window are forgotten.
	r.Observe(t0.Add(100*time.Second), 3000)
	if v, ok := r.PerSecond(); !ok || v != 0 {
		t.Fatalf("rate after a stall = %v %v, want 0", v, ok)
	}
	// A reset of the offsets starts the history over.
	r.Observe(t0.Add(110*time.Second), 10)
	if _, ok := r.PerSecond(); ok {
		t.Fatal("rate known right after an offset reset")
	}

	for _, tt := range []struct {
		lag       int64
		perSecond float64
		want      float64
	}{
		{0, 0, 0}, {1000, 100, 10}, {1000, 0, 3600}, {10_000_000, 1, 3600},
	} {
		if got := lag.DrainSeconds(tt.lag, tt.perSecond, 3600); got != tt.want {
			t.Errorf("DrainSeconds(%d, %v) = %v, want %v", tt.lag, tt.perSecond, got, tt.want)
		}
	}
}
