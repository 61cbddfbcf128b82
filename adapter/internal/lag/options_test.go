package lag_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
)

// commit sets group's committed offsets on topic: offsets[i] for
// partition i, -1 for none.
func commit(t *testing.T, bootstrap, group, topic string, offsets []int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var o kadm.Offsets
	for p, off := range offsets {
		if off >= 0 {
			o.AddOffset(topic, int32(p), off, -1)
		}
	}
	if _, err := kadm.NewClient(cl).CommitOffsets(context.Background(), group, o); err != nil {
		t.Fatal(err)
	}
}

func lagWith(t *testing.T, s *lag.Source, group, topic string, o lag.Options) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	samples, err := s.Fetch(ctx, lag.Query{Groups: []string{group}, Topics: []string{topic}, Options: o})
	if err != nil {
		t.Fatal(err)
	}
	for _, smp := range samples {
		if smp.Metric == lag.MetricLag {
			return smp.Value
		}
	}
	t.Fatalf("no lag sample in %+v", samples)
	return 0
}

// KEDA's Kafka scaler options, as a migrated ScaledObject relies on them.
func TestKEDAOptions(t *testing.T) {
	_, bootstrap := testkafka.Fake(t)
	s := source(t, bootstrap)

	t.Run("offsetResetPolicy", func(t *testing.T) {
		topic, group := unique("reset"), unique("group")
		createTopic(t, bootstrap, topic, 4)
		produce(t, bootstrap, topic, []int{10, 10, 10, 0}, false)
		commit(t, bootstrap, group, topic, []int64{10, -1, -1, -1})
		if got := lagWith(t, s, group, topic, lag.Options{}); got != 20 {
			t.Fatalf("earliest (the default): lag %v, want 20 (every retained message of the uncommitted partitions)", got)
		}
		// latest: a consumer that never committed will skip to the end;
		// 1 per uncommitted partition with messages, as KEDA counts.
		if got := lagWith(t, s, group, topic, lag.Options{OffsetReset: "latest"}); got != 2 {
			t.Fatalf("latest: lag %v, want 2", got)
		}
	})

	t.Run("partitionLimitation", func(t *testing.T) {
		topic, group := unique("limit"), unique("group")
		createTopic(t, bootstrap, topic, 4)
		produce(t, bootstrap, topic, []int{10, 20, 30, 40}, false)
		commit(t, bootstrap, group, topic, []int64{0, 0, 0, 0})
		set, err := lag.ParsePartitionSet("3, 0-1")
		if err != nil || set != "0-1,3" {
			t.Fatalf("ParsePartitionSet = %q, %v", set, err)
		}
		if got := lagWith(t, s, group, topic, lag.Options{Partitions: set}); got != 10+20+40 {
			t.Fatalf("partitions 0, 1 and 3: lag %v, want 70", got)
		}
	})

	t.Run("lagThreshold and limitToPartitionsWithLag", func(t *testing.T) {
		// Skewed keys: all of the lag on one partition of four.
		topic, group := unique("skew"), unique("group")
		createTopic(t, bootstrap, topic, 4)
		produce(t, bootstrap, topic, []int{0, 100, 0, 0}, false)
		commit(t, bootstrap, group, topic, []int64{0, 0, 0, 0})
		for _, c := range []struct {
			o    lag.Options
			want float64
		}{
			{lag.Options{}, 100},
			{lag.Options{LagThreshold: 5}, 20},                                // 4 partitions: at most 4 replicas at target 5
			{lag.Options{LagThreshold: 5, LimitToPartitionsWithLag: true}, 5}, // 1 partition has lag: 1 replica
			{lag.Options{LagThreshold: 500}, 100},                             // under the cap: the lag itself
		} {
			if got := lagWith(t, s, group, topic, c.o); got != c.want {
				t.Errorf("%+v: lag %v, want %v", c.o, got, c.want)
			}
		}
	})

	t.Run("ensureEvenDistributionOfPartitions (KEDA's cases)", func(t *testing.T) {
		// KEDA's own test of the option: 10 partitions, lagThreshold 1;
		// the lag served makes the HPA's replicas a divisor of 10 (1, 2,
		// 5, 10) that covers the lag, never more than 10.
		topic, group := unique("even"), unique("group")
		createTopic(t, bootstrap, topic, 10)
		produce(t, bootstrap, topic, []int{5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, false)
		o := lag.Options{LagThreshold: 1, EvenDistribution: true}
		for _, c := range []struct {
			lag  int // spread over the partitions, at most 5 each
			want float64
		}{
			{0, 1}, {1, 1}, {2, 2}, {3, 5}, {5, 5}, {6, 10}, {10, 10}, {25, 10},
		} {
			committed := make([]int64, 10)
			left := c.lag
			for i := range committed {
				behind := min(left, 5)
				if c.lag <= 10 {
					behind = min(left, 1) // one message behind on each of the first partitions
				}
				committed[i] = int64(5 - behind)
				left -= behind
			}
			commit(t, bootstrap, group, topic, committed)
			if got := lagWith(t, s, group, topic, o); got != c.want {
				t.Errorf("lag %d over 10 partitions: served %v, want %v (replicas at target 1)", c.lag, got, c.want)
			}
		}
		// With limitToPartitionsWithLag, the divisor is capped at the
		// partitions that have lag (KEDA applies the cap after it): 3
		// behind on three partitions asks for 5, capped to 3.
		commit(t, bootstrap, group, topic, []int64{4, 4, 4, 5, 5, 5, 5, 5, 5, 5})
		if got := lagWith(t, s, group, topic, lag.Options{LagThreshold: 1, EvenDistribution: true, LimitToPartitionsWithLag: true}); got != 3 {
			t.Errorf("with limitToPartitionsWithLag: served %v, want 3", got)
		}
	})

	t.Run("excludePersistentLag", func(t *testing.T) {
		topic, group := unique("stuck"), unique("group")
		createTopic(t, bootstrap, topic, 2)
		produce(t, bootstrap, topic, []int{10, 5}, false)
		commit(t, bootstrap, group, topic, []int64{0, 5})
		o := lag.Options{ExcludePersistentLag: time.Second}
		if got := lagWith(t, s, group, topic, o); got != 10 {
			t.Fatalf("first read: lag %v, want 10", got)
		}
		time.Sleep(1200 * time.Millisecond)
		// Partition 1 was idle at its commit with no lag; new messages
		// on it are lag at once, not "persistent".
		produce(t, bootstrap, topic, []int{0, 3}, false)
		if got := lagWith(t, s, group, topic, o); got != 3 {
			t.Fatalf("partition 0 stuck for 1.2 s: lag %v, want 3 (partition 0's 10 excluded, partition 1's new 3 counted)", got)
		}
		// The consumer gets past the poison message: it counts again.
		commit(t, bootstrap, group, topic, []int64{2, 5})
		if got := lagWith(t, s, group, topic, o); got != 8+3 {
			t.Fatalf("after partition 0's commit moved: lag %v, want 11", got)
		}
	})

	t.Run("excludePersistentLag on a transactional topic", func(t *testing.T) {
		// Consumed to the end: only the commit markers are left, which are
		// no lag, so nothing is "stuck at 1" (KEDA #5675).
		topic, group := unique("txn-stuck"), unique("group")
		createTopic(t, bootstrap, topic, 2)
		produce(t, bootstrap, topic, []int{4, 6}, true)
		consume(t, bootstrap, group, topic, []int{4, 6})
		o := lag.Options{ExcludePersistentLag: time.Second}
		for range 2 {
			if got := lagWith(t, s, group, topic, o); got != 0 {
				t.Fatalf("lag %v, want 0", got)
			}
			time.Sleep(1100 * time.Millisecond)
		}
	})
}

func TestOptionsInTheSelector(t *testing.T) {
	for sel, want := range map[string]string{
		"consumergroup=g,topic=t,offsetResetPolicy=latest,excludePersistentLag=5m,lagThreshold=100,limitToPartitionsWithLag=true": "",
		"consumergroup=g,offsetResetPolicy=newest":      "offsetResetPolicy=\"newest\": earliest or latest",
		"consumergroup=g,excludePersistentLag=forever":  "excludePersistentLag=\"forever\": a duration",
		"consumergroup=g,lagThreshold=0":                "lagThreshold=\"0\": a positive number",
		"consumergroup=g,limitToPartitionsWithLag=yes":  "limitToPartitionsWithLag=\"yes\": true or false",
		"consumergroup=g,limitToPartitionsWithLag=true": "needs lagThreshold",
		"consumergroup=g,activationLagThreshold=5":      "unknown label \"activationLagThreshold\"",
	} {
		s, err := labels.Parse(sel)
		if err != nil {
			t.Fatal(err)
		}
		q, err := lag.ParseSelector(s)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: err %v, want %q", sel, err, want)
		}
		if want == "" && (q.OffsetReset != "latest" || q.ExcludePersistentLag != 5*time.Minute || q.LagThreshold != 100 || !q.LimitToPartitionsWithLag) {
			t.Errorf("%s: parsed %+v", sel, q)
		}
	}
	for _, bad := range []string{"1-", "a", "5-3", ",", "-1"} {
		if _, err := lag.ParsePartitionSet(bad); err == nil {
			t.Errorf("partitionLimitation %q accepted", bad)
		}
	}
}
