package lag

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options are KEDA's Kafka scaler options, for users who move their
// ScaledObjects over. An HPA author sets the first four as labels of the
// metric selector (offsetResetPolicy=latest,excludePersistentLag=5m,...);
// partitionLimitation ("0,2,10-20": commas and ranges are not label
// values) comes from the adapter's kafkaLag.access grant.
type Options struct {
	// OffsetReset is what a partition the group never committed counts:
	// "earliest" (default: every retained message, what a consumer with
	// auto.offset.reset=earliest will read) or "latest" (1 when the
	// partition holds messages, as KEDA counts it: a consumer on latest
	// will skip them, and its HPA must not scale to its maximum before
	// its first commit).
	OffsetReset string
	// ExcludePersistentLag: a partition whose committed offset has not
	// moved for this long while it has lag (a poison message the consumer
	// cannot get past) stops counting, until its offset moves. Defined in
	// time, not in reads (reads grow with the HPAs asking). 0: off.
	ExcludePersistentLag time.Duration
	// LagThreshold is the HPA's target lag per replica (KEDA's
	// lagThreshold): with it, the lag served is capped at LagThreshold
	// times the partitions, so the HPA never asks for more replicas than
	// partitions (idle consumers). 0: no cap.
	LagThreshold int64
	// LimitToPartitionsWithLag caps at the partitions that have lag
	// instead (skewed keys: one hot partition is one replica's work).
	LimitToPartitionsWithLag bool
	// EvenDistribution (KEDA's ensureEvenDistributionOfPartitions, 2.18):
	// the lag served is LagThreshold times the smallest divisor of the
	// topic's partition count that covers the lag, so the HPA's replica
	// count divides the partitions and every consumer reads as many.
	EvenDistribution bool
	// Partitions, when set, are the only partitions that count
	// (partitionLimitation).
	Partitions PartitionSet
}

// The selector labels of the options.
const (
	LabelOffsetReset              = "offsetResetPolicy"
	LabelExcludePersistentLag     = "excludePersistentLag"
	LabelLagThreshold             = "lagThreshold"
	LabelLimitToPartitionsWithLag = "limitToPartitionsWithLag"
	LabelEvenDistribution         = "ensureEvenDistributionOfPartitions"
)

// key is the options' part of a query's store key.
func (o Options) key() string {
	if o == (Options{}) {
		return ""
	}
	return fmt.Sprintf("|reset=%s,persistent=%s,threshold=%d,withLag=%t,even=%t,partitions=%s",
		o.OffsetReset, o.ExcludePersistentLag, o.LagThreshold, o.LimitToPartitionsWithLag, o.EvenDistribution, o.Partitions)
}

// setOption reads one option label; ok is false for a label that is not
// an option.
func (o *Options) setOption(key, value string) (ok bool, err error) {
	switch key {
	case LabelOffsetReset:
		if value != "earliest" && value != "latest" {
			return true, fmt.Errorf("%s=%q: earliest or latest", key, value)
		}
		o.OffsetReset = value
	case LabelExcludePersistentLag:
		d, err := time.ParseDuration(value)
		if err != nil || d < 0 {
			return true, fmt.Errorf("%s=%q: a duration such as 5m (how long a partition's commit must stand still with lag before it stops counting)", key, value)
		}
		o.ExcludePersistentLag = d
	case LabelLagThreshold:
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil || n <= 0 {
			return true, fmt.Errorf("%s=%q: a positive number of messages (the HPA's target per replica)", key, value)
		}
		o.LagThreshold = n
	case LabelLimitToPartitionsWithLag:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return true, fmt.Errorf("%s=%q: true or false", key, value)
		}
		o.LimitToPartitionsWithLag = b
	case LabelEvenDistribution:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return true, fmt.Errorf("%s=%q: true or false", key, value)
		}
		o.EvenDistribution = b
	default:
		return false, nil
	}
	return true, nil
}

func (o Options) validate() error {
	for label, set := range map[string]bool{LabelLimitToPartitionsWithLag: o.LimitToPartitionsWithLag, LabelEvenDistribution: o.EvenDistribution} {
		if set && o.LagThreshold == 0 {
			return fmt.Errorf("%s=true needs %s (the HPA's target per replica): the adapter does not see the HPA's target", label, LabelLagThreshold)
		}
	}
	return nil
}

// PartitionSet is a partitionLimitation: partitions and ranges, "0,2,10-20".
// The zero value is every partition.
type PartitionSet string

// ParsePartitionSet checks a partitionLimitation.
func ParsePartitionSet(s string) (PartitionSet, error) {
	ranges, err := PartitionSet(s).ranges()
	if err != nil {
		return "", err
	}
	sort.Slice(ranges, func(i, j int) bool { return ranges[i][0] < ranges[j][0] })
	parts := make([]string, len(ranges))
	for i, r := range ranges {
		parts[i] = strconv.Itoa(int(r[0]))
		if r[1] != r[0] {
			parts[i] += "-" + strconv.Itoa(int(r[1]))
		}
	}
	return PartitionSet(strings.Join(parts, ",")), nil
}

func (p PartitionSet) ranges() ([][2]int32, error) {
	var out [][2]int32
	for _, f := range strings.Split(string(p), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err1 := strconv.ParseInt(strings.TrimSpace(lo), 10, 32)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.ParseInt(strings.TrimSpace(hi), 10, 32)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return nil, fmt.Errorf("partitionLimitation %q: %q is not a partition or a range such as 10-20", string(p), f)
		}
		out = append(out, [2]int32{int32(a), int32(b)})
	}
	if len(out) == 0 && p != "" {
		return nil, fmt.Errorf("partitionLimitation %q names no partition", string(p))
	}
	return out, nil
}

// Has reports whether partition counts.
func (p PartitionSet) Has(partition int32) bool {
	if p == "" {
		return true
	}
	ranges, _ := p.ranges()
	for _, r := range ranges {
		if partition >= r[0] && partition <= r[1] {
			return true
		}
	}
	return false
}

// stillSince tracks since when a partition's commit has not moved.
type stillSince struct {
	committed int64
	since     time.Time
}

// apply adjusts the partitions' lags by the options: the partition
// limitation, the latest reset policy and the persistent-lag exclusion
// (still says since when each partition's commit has stood where it is
// with lag behind it).
func (o Options) apply(lags []PartitionLag, still func(PartitionLag) time.Time, now time.Time) []PartitionLag {
	out := lags[:0]
	for _, l := range lags {
		if !o.Partitions.Has(l.Partition.Partition) {
			continue
		}
		if l.Reason == "uncommitted" && o.OffsetReset == "latest" {
			l.Lag, l.Reason = min(l.Lag, 1), "uncommitted, latest"
		}
		if o.ExcludePersistentLag > 0 && l.Committed >= 0 && still != nil {
			if since := still(l); l.Lag > 0 && now.Sub(since) >= o.ExcludePersistentLag {
				l.Lag, l.Reason = 0, "persistent"
			}
		}
		out = append(out, l)
	}
	return out
}

// capped is a topic's lag as served to the HPA under LagThreshold: at most
// the threshold times the partitions (with lag, under
// LimitToPartitionsWithLag), so the HPA asks for no more replicas than
// there are partitions to read.
//
// Under EvenDistribution the lag is first rounded up to LagThreshold times
// the smallest divisor of the partition count whose replicas would cover
// it (KEDA's order: the divisor first, then the cap).
func (o Options) capped(t TopicLag) int64 {
	if o.LagThreshold <= 0 {
		return t.Lag
	}
	lag := t.Lag
	if o.EvenDistribution {
		lag = o.LagThreshold * evenReplicas(lag, int64(t.Partitions), o.LagThreshold)
	}
	n := int64(t.Partitions)
	if o.LimitToPartitionsWithLag {
		n = int64(t.PartitionsWithLag)
	}
	return min(lag, o.LagThreshold*n)
}

// evenReplicas is the smallest divisor d of partitions with d×threshold
// at least lag (partitions itself when none is; 1 for a topic without
// partitions counted).
func evenReplicas(lag, partitions, threshold int64) int64 {
	if partitions < 1 {
		return 1
	}
	for d := int64(1); d <= partitions; d++ {
		if partitions%d == 0 && d*threshold >= lag {
			return d
		}
	}
	return partitions
}
