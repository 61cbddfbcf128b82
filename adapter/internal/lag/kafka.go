package lag

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/purchase-system/purchase-system/adapter/internal/backend"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
)

// The external metrics this package serves, and their labels.
const (
	MetricLag        = "kafka_consumergroup_lag"
	MetricLagSeconds = "kafka_consumergroup_lag_seconds"
	LabelGroup       = "consumergroup"
	LabelTopic       = "topic"
)

// Source computes lag from the brokers with one shared admin client.
type Source struct {
	admin     *kafka.AdminClient
	producer  *kafka.Producer // the admin client's handle
	bootstrap string
	obs       *backend.Observer
	metrics   *Metrics
	// RateWindow is how far back the consumption rate looks;
	// DrainCap bounds kafka_consumergroup_lag_seconds.
	RateWindow time.Duration
	DrainCap   float64

	// MarkerCheckMax: partitions whose offset lag is at most this are
	// read (read_committed) to count their records, so transaction
	// markers are not taken for messages. 0 disables the check.
	MarkerCheckMax int64

	mu    sync.Mutex
	rates map[[2]string]*Rate

	readerMu  sync.Mutex
	reader    *kafka.Consumer
	readerCfg kafka.ConfigMap

	// GroupIdle: a group's consumer handle is closed after this long
	// without a question about the group.
	GroupIdle time.Duration
	// MaxGroups bounds the consumer groups with an open handle (each is a
	// librdkafka client: threads and connections); a question about one
	// more is refused with an error saying so.
	MaxGroups int
	clientCfg kafka.ConfigMap
	groupsMu  sync.Mutex
	groups    map[string]*groupHandle

	readyOnce sync.Once
	ready     chan struct{}
}

// Metrics are the lag source's own metrics.
type Metrics struct {
	computeSeconds prometheus.Histogram
	// lag and lagSeconds: the last values computed for an HPA, by
	// consumer group and topic, so dashboards and alerts see what the HPA
	// saw.
	lag, lagSeconds *prometheus.GaugeVec
}

// NewMetrics creates the lag metrics and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		computeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "adapter_kafka_lag_compute_seconds", Help: "Time to compute one consumer group's lag from the brokers.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_kafka_consumergroup_lag", Help: "Consumer group lag in messages, as last served (newest offset minus committed, summed over the topic's partitions).",
		}, []string{LabelGroup, LabelTopic}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_kafka_consumergroup_lag_seconds", Help: "Estimated seconds for the group to consume its lag, as last served.",
		}, []string{LabelGroup, LabelTopic}),
	}
	if reg != nil {
		reg.MustRegister(m.computeSeconds, m.lag, m.lagSeconds)
	}
	return m
}

// NewSource connects an admin client with the given librdkafka settings
// (bootstrap.servers at least). bm and m may be nil.
func NewSource(cfg kafka.ConfigMap, bm *backend.Metrics, m *Metrics) (*Source, error) {
	// Asking about a topic (a selector naming one) must never create it:
	// a broker with auto.create.topics.enable would, and librdkafka's admin
	// client allows it by default.
	cfg["allow.auto.create.topics"] = false
	// The admin client rides on a producer that never produces: a
	// producer (unlike a bare admin client) can hand librdkafka's own log
	// lines to go.logs.channel, when the caller set one, instead of
	// stderr.
	pcfg := kafka.ConfigMap{}
	for k, v := range cfg {
		pcfg[k] = v
	}
	producer, err := kafka.NewProducer(&pcfg)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	admin, err := kafka.NewAdminClientFromProducer(producer)
	if err != nil {
		producer.Close()
		return nil, fmt.Errorf("kafka admin client: %w", err)
	}
	if bm == nil {
		bm = backend.NewMetrics(nil)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	obs := bm.For("kafka", "metadata", "committed_offsets", "end_offsets", "start_offsets", "list_groups", "marker_check")
	bs, _ := cfg.Get("bootstrap.servers", "")
	readerCfg := kafka.ConfigMap{}
	for k, v := range cfg {
		readerCfg[k] = v
	}
	// A reader that never joins a group or commits: it is only assigned
	// partitions to count records.
	readerCfg["group.id"] = "purchase-metrics-adapter-marker-check"
	readerCfg["enable.auto.commit"] = false
	readerCfg["enable.auto.offset.store"] = false
	readerCfg["isolation.level"] = "read_committed"
	readerCfg["enable.partition.eof"] = true
	readerCfg["fetch.wait.max.ms"] = 10
	return &Source{admin: admin, producer: producer, bootstrap: fmt.Sprint(bs), obs: obs, metrics: m,
		RateWindow: 2 * time.Minute, DrainCap: 3600, MarkerCheckMax: 10, GroupIdle: 10 * time.Minute, MaxGroups: 50,
		rates: map[[2]string]*Rate{}, readerCfg: readerCfg, clientCfg: cfg, groups: map[string]*groupHandle{},
		ready: make(chan struct{})}, nil
}

// Ready reports whether the brokers have answered at least once.
func (s *Source) Ready() error {
	select {
	case <-s.ready:
		return nil
	default:
	}
	t0 := time.Now()
	_, err := s.admin.GetMetadata(nil, false, 2000)
	s.obs.Observe("metadata", t0, err)
	if err != nil {
		return s.wrap("metadata", err)
	}
	s.readyOnce.Do(func() { close(s.ready) })
	return nil
}

// Reachable asks the brokers for metadata now (2 s at most): what the
// adapter's /readyz shows for Kafka.
func (s *Source) Reachable() error {
	t0 := time.Now()
	_, err := s.admin.GetMetadata(nil, false, 2000)
	s.obs.Observe("metadata", t0, err)
	if err != nil {
		return s.wrap("metadata", err)
	}
	return nil
}

// Close closes the admin client, the group handles and the marker-check
// reader.
func (s *Source) Close() {
	s.admin.Close()
	s.producer.Close()
	s.groupsMu.Lock()
	for g, r := range s.groups {
		r.c.Close()
		delete(s.groups, g)
	}
	s.groupsMu.Unlock()
	s.readerMu.Lock()
	defer s.readerMu.Unlock()
	if s.reader != nil {
		s.reader.Close()
	}
}

// span is a stretch of a partition to count records in: [from, to).
type span struct {
	topic     string
	partition int32
	from, to  int64
}

// countConsumable reads the spans with read_committed, all partitions at
// once, and returns how many records a consumer gets in each.
func (s *Source) countConsumable(ctx context.Context, spans []span) (map[tpKey]int64, error) {
	s.readerMu.Lock()
	defer s.readerMu.Unlock()
	if s.reader == nil {
		r, err := kafka.NewConsumer(&s.readerCfg)
		if err != nil {
			return nil, err
		}
		s.reader = r
	}
	t0 := time.Now()
	tps := make([]kafka.TopicPartition, len(spans))
	left := map[tpKey]int64{} // end offset of each span still being read
	counts := map[tpKey]int64{}
	for i, sp := range spans {
		topic := sp.topic
		tps[i] = kafka.TopicPartition{Topic: &topic, Partition: sp.partition, Offset: kafka.Offset(sp.from)}
		left[tpKey{sp.topic, sp.partition}] = sp.to
		counts[tpKey{sp.topic, sp.partition}] = 0
	}
	if err := s.reader.Assign(tps); err != nil {
		return nil, err
	}
	defer func() { _ = s.reader.Unassign() }()
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var err error
	for len(left) > 0 && err == nil && time.Now().Before(deadline) {
		switch ev := s.reader.Poll(100).(type) {
		case *kafka.Message:
			k := tpKey{*ev.TopicPartition.Topic, ev.TopicPartition.Partition}
			to, ok := left[k]
			if !ok {
				continue
			}
			if off := int64(ev.TopicPartition.Offset); off < to {
				counts[k]++
				if off == to-1 {
					delete(left, k)
				}
			} else {
				delete(left, k)
			}
		case kafka.PartitionEOF:
			// With read_committed the end is the last stable offset: the
			// markers after the last record are behind it.
			delete(left, tpKey{*ev.Topic, ev.Partition})
		case kafka.Error:
			err = ev
		}
	}
	if err == nil && len(left) > 0 {
		err = fmt.Errorf("%d partitions not read to their end within the deadline", len(left))
	}
	s.obs.Observe("marker_check", t0, err)
	return counts, err
}

func (s *Source) wrap(what string, err error) error {
	return fmt.Errorf("kafka at %s: %s: %w", s.bootstrap, what, err)
}

// Query is what an external metric selector asks for: a store query. One
// computation gives both kafka_consumergroup_lag and
// kafka_consumergroup_lag_seconds.
type Query struct {
	Groups []string // at least one
	Topics []string // empty: every topic the group committed on
}

// Key identifies the query in the store.
func (q Query) Key() string {
	return "kafka-lag|" + strings.Join(q.Groups, ",") + "|" + strings.Join(q.Topics, ",")
}

// ParseSelector reads consumergroup and topic (=, ==, in) from a metric
// selector; anything else is an error that says what is supported.
//
// The consumer group is required. Without it the answer would mean
// nothing: groups that never read a topic would count its whole log as
// lag (an HPA would scale to its maximum), and one idle group without
// commits would fail everyone's request.
func ParseSelector(sel labels.Selector) (Query, error) {
	var f Query
	if sel == nil {
		sel = labels.Everything()
	}
	reqs, _ := sel.Requirements()
	for _, r := range reqs {
		op := r.Operator()
		if op != selection.Equals && op != selection.DoubleEquals && op != selection.In {
			return f, fmt.Errorf("metric selector %q: only %s and %s with = or in are supported", sel, LabelGroup, LabelTopic)
		}
		vals := r.Values().List()
		switch r.Key() {
		case LabelGroup:
			f.Groups = vals
		case LabelTopic:
			f.Topics = vals
		default:
			return f, fmt.Errorf("metric selector %q: unknown label %q (the labels are %s and %s)", sel, r.Key(), LabelGroup, LabelTopic)
		}
	}
	if len(f.Groups) == 0 {
		return f, fmt.Errorf("metric selector %q names no consumer group: say whose lag, e.g. %s=purchase-consumer-group,%s=purchases (without a group, groups that never read a topic would count its whole log as lag)",
			sel, LabelGroup, LabelTopic)
	}
	return f, nil
}

// Fetch computes, for every group and topic the query selects, the lag
// (one sample per group and topic, summed over partitions, Metric
// kafka_consumergroup_lag) and the time to drain it (Metric
// kafka_consumergroup_lag_seconds; missing until two samples of the
// group's consumption exist).
func (s *Source) Fetch(ctx context.Context, q Query) ([]store.Sample, error) {
	return s.compute(ctx, q, true)
}

// Peek computes what Fetch would, without recording anything: the
// consumption history behind lag seconds and the "as last served" gauges
// stay as the HPA path left them (for explaining; its lag seconds use the
// history as it stands).
func (s *Source) Peek(ctx context.Context, q Query) ([]store.Sample, error) {
	return s.compute(ctx, q, false)
}

func (s *Source) compute(ctx context.Context, q Query, record bool) ([]store.Sample, error) {
	if len(q.Groups) == 0 {
		return nil, fmt.Errorf("no consumer group asked for")
	}
	var out []store.Sample
	for _, g := range q.Groups {
		start := time.Now()
		parts, err := s.GroupPartitions(ctx, g, q.Topics)
		if record {
			s.metrics.computeSeconds.Observe(time.Since(start).Seconds())
		}
		if err != nil {
			return nil, &Error{Group: g, Cause: err}
		}
		now := time.Now()
		for _, t := range ByTopic(g, Calculate(parts)) {
			labels := map[string]string{LabelGroup: g, LabelTopic: t.Topic}
			out = append(out, store.Sample{Metric: MetricLag, Labels: labels, Value: float64(t.Lag), Timestamp: now})
			var rate *Rate
			if record {
				s.metrics.lag.WithLabelValues(g, t.Topic).Set(float64(t.Lag))
				rate = s.observeRate(g, t.Topic, now, t.Committed)
			} else {
				rate = s.rateWith(g, t.Topic, now, t.Committed)
			}
			perSec, known := rate.PerSecond()
			if !known && t.Lag > 0 {
				// Not enough history for a rate yet: missing, not a guess.
				continue
			}
			secs := DrainSeconds(t.Lag, perSec, s.DrainCap)
			out = append(out, store.Sample{Metric: MetricLagSeconds, Labels: labels, Value: secs, Timestamp: now})
			if record {
				s.metrics.lagSeconds.WithLabelValues(g, t.Topic).Set(secs)
			}
		}
	}
	return out, nil
}

// rateWith is the group's consumption rate with one more observation,
// computed on a copy: the kept history is not changed.
func (s *Source) rateWith(group, topic string, at time.Time, committed int64) *Rate {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := Rate{Window: s.RateWindow}
	if r, ok := s.rates[[2]string{group, topic}]; ok {
		cp = *r
		cp.samples = append([]rateSample(nil), r.samples...)
	}
	cp.Observe(at, committed)
	return &cp
}

func (s *Source) observeRate(group, topic string, at time.Time, committed int64) *Rate {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := [2]string{group, topic}
	r, ok := s.rates[k]
	if !ok {
		r = &Rate{Window: s.RateWindow}
		s.rates[k] = r
	}
	r.Observe(at, committed)
	cp := *r
	cp.samples = append([]rateSample(nil), r.samples...)
	return &cp
}

type tpKey struct {
	topic     string
	partition int32
}

// GroupPartitions fetches, for every partition of the topics (or of every
// topic the group committed on), the log start, the last stable offset and
// the group's committed offset. Any error — an unreachable broker, a
// coordinator that moved — is returned: lag that cannot be known is not 0.
func (s *Source) GroupPartitions(ctx context.Context, group string, topics []string) ([]Partition, error) {
	explicit := len(topics) > 0
	if !explicit {
		// Which topics the group consumes is not asked of the group
		// coordinator (see committed): every topic's partitions are read,
		// and those the group never committed on are dropped below.
		t0 := time.Now()
		md, err := s.admin.GetMetadata(nil, true, timeoutMs(ctx))
		s.obs.Observe("metadata", t0, err)
		if err != nil {
			return nil, s.wrap("metadata", err)
		}
		for name := range md.Topics {
			if !strings.HasPrefix(name, "__") {
				topics = append(topics, name)
			}
		}
		sort.Strings(topics)
	}
	// Every partition from metadata: a partition the group never committed
	// is absent from its offsets but has lag all the same.
	var tps []kafka.TopicPartition
	for _, topic := range topics {
		t0 := time.Now()
		md, err := s.admin.GetMetadata(&topic, false, timeoutMs(ctx))
		s.obs.Observe("metadata", t0, err)
		if err != nil {
			return nil, s.wrap("metadata of topic "+topic, err)
		}
		tm, ok := md.Topics[topic]
		if !ok || tm.Error.Code() != kafka.ErrNoError {
			return nil, s.wrap("metadata of topic "+topic, fmt.Errorf("%v", tm.Error))
		}
		for _, p := range tm.Partitions {
			tps = append(tps, kafka.TopicPartition{Topic: &topic, Partition: p.ID})
		}
	}
	committed, err := s.committed(ctx, group, tps)
	if err != nil {
		return nil, err
	}
	if !explicit {
		consumed := map[string]bool{}
		for k := range committed {
			consumed[k.topic] = true
		}
		kept := tps[:0]
		for _, tp := range tps {
			if consumed[*tp.Topic] {
				kept = append(kept, tp)
			}
		}
		tps = kept
		if len(tps) == 0 {
			return nil, fmt.Errorf("the group has committed no offsets: name its topic in the selector (%s=...)", LabelTopic)
		}
	}
	end, err := s.offsets(ctx, tps, kafka.LatestOffsetSpec)
	if err != nil {
		return nil, err
	}
	start, err := s.offsets(ctx, tps, kafka.EarliestOffsetSpec)
	if err != nil {
		return nil, err
	}
	out := make([]Partition, 0, len(tps))
	var spans []span
	for _, tp := range tps {
		k := tpKey{*tp.Topic, tp.Partition}
		c, ok := committed[k]
		if !ok {
			c = NoOffset
		}
		p := Partition{Topic: k.topic, Partition: k.partition, Start: start[k], End: end[k], Committed: c}
		if d := p.End - p.Committed; c >= p.Start && d > 0 && d <= s.MarkerCheckMax {
			spans = append(spans, span{p.Topic, p.Partition, p.Committed, p.End})
		}
		out = append(out, p)
	}
	if len(spans) > 0 {
		counts, err := s.countConsumable(ctx, spans)
		if err != nil {
			return nil, s.wrap("counting records after the commit", err)
		}
		for i := range out {
			if n, ok := counts[tpKey{out[i].Topic, out[i].Partition}]; ok {
				out[i].Consumable = &n
			}
		}
	}
	return out, nil
}

// committed reads the group's committed offsets for tps through a
// consumer handle of the group (created on first use, kept while the group
// is asked about). The admin API's ListConsumerGroupOffsets is not used:
// when the coordinator moves and a broker answers NOT_COORDINATOR,
// librdkafka's admin path dereferences a missing group handle and crashes
// the process (librdkafka #5040); a consumer handle re-finds the
// coordinator and retries, and past the deadline it is an error.
func (s *Source) committed(ctx context.Context, group string, tps []kafka.TopicPartition) (map[tpKey]int64, error) {
	r, err := s.groupReader(group)
	if err != nil {
		return nil, s.wrap("committed offsets", err)
	}
	t0 := time.Now()
	res, err := r.Committed(tps, timeoutMs(ctx))
	s.obs.Observe("committed_offsets", t0, err)
	if err != nil {
		return nil, s.wrap("committed offsets", err)
	}
	out := map[tpKey]int64{}
	var errs []string
	for _, tp := range res {
		if tp.Error != nil {
			errs = append(errs, fmt.Sprintf("%s[%d]: %v", *tp.Topic, tp.Partition, tp.Error))
			continue
		}
		if tp.Offset >= 0 {
			out[tpKey{*tp.Topic, tp.Partition}] = int64(tp.Offset)
		}
	}
	if len(errs) > 0 {
		return nil, s.wrap("committed offsets", errors.New(strings.Join(errs, "; ")))
	}
	return out, nil
}

// groupReader returns the consumer handle of group, creating it on first
// use, and closes handles of groups not asked about for GroupIdle. It
// never subscribes, so it never joins the group; it only reads offsets.
func (s *Source) groupReader(group string) (*kafka.Consumer, error) {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	now := time.Now()
	for g, r := range s.groups {
		if g != group && now.Sub(r.lastUsed) > s.GroupIdle {
			r.c.Close()
			delete(s.groups, g)
			s.forget(g)
		}
	}
	if r, ok := s.groups[group]; ok {
		r.lastUsed = now
		// Nothing is consumed, but client errors (a broker down) queue
		// up as events until polled: drain them.
		for ev := r.c.Poll(0); ev != nil; ev = r.c.Poll(0) {
		}
		return r.c, nil
	}
	if s.MaxGroups > 0 && len(s.groups) >= s.MaxGroups {
		return nil, fmt.Errorf("the adapter already reads the offsets of %d consumer groups (--kafka-max-groups), each asked about in the last %s; not opening one more for %q", len(s.groups), s.GroupIdle, group)
	}
	cfg := kafka.ConfigMap{}
	for k, v := range s.clientCfg {
		cfg[k] = v
	}
	cfg["group.id"] = group
	cfg["enable.auto.commit"] = false
	cfg["enable.auto.offset.store"] = false
	c, err := kafka.NewConsumer(&cfg)
	if err != nil {
		return nil, err
	}
	s.groups[group] = &groupHandle{c: c, lastUsed: now}
	return c, nil
}

// forget drops what is kept about a group nobody asks about any more: its
// consumption history and its last values, which would read as current on
// a dashboard.
func (s *Source) forget(group string) {
	s.mu.Lock()
	for k := range s.rates {
		if k[0] == group {
			delete(s.rates, k)
		}
	}
	s.mu.Unlock()
	s.metrics.lag.DeletePartialMatch(map[string]string{LabelGroup: group})
	s.metrics.lagSeconds.DeletePartialMatch(map[string]string{LabelGroup: group})
}

// OpenGroups is the number of consumer groups with an open offsets
// handle.
func (s *Source) OpenGroups() int {
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	return len(s.groups)
}

type groupHandle struct {
	c        *kafka.Consumer
	lastUsed time.Time
}

// offsets lists the earliest or latest (read_committed: last stable)
// offset of each partition.
func (s *Source) offsets(ctx context.Context, tps []kafka.TopicPartition, spec kafka.OffsetSpec) (map[tpKey]int64, error) {
	req := make(map[kafka.TopicPartition]kafka.OffsetSpec, len(tps))
	for _, tp := range tps {
		req[tp] = spec
	}
	kind := "end_offsets"
	if spec == kafka.EarliestOffsetSpec {
		kind = "start_offsets"
	}
	t0 := time.Now()
	res, err := s.admin.ListOffsets(ctx, req, kafka.SetAdminIsolationLevel(kafka.IsolationLevelReadCommitted))
	s.obs.Observe(kind, t0, err)
	if err != nil {
		return nil, s.wrap(kind, err)
	}
	out := make(map[tpKey]int64, len(res.ResultInfos))
	var errs []string
	for tp, info := range res.ResultInfos {
		if info.Error.Code() != kafka.ErrNoError {
			errs = append(errs, fmt.Sprintf("%s[%d]: %v", *tp.Topic, tp.Partition, info.Error))
			continue
		}
		out[tpKey{*tp.Topic, tp.Partition}] = int64(info.Offset)
	}
	if len(errs) > 0 {
		return nil, s.wrap(kind, errors.New(strings.Join(errs, "; ")))
	}
	for _, tp := range tps {
		if _, ok := out[tpKey{*tp.Topic, tp.Partition}]; !ok {
			return nil, s.wrap(kind, fmt.Errorf("no offset returned for %s[%d]", *tp.Topic, tp.Partition))
		}
	}
	return out, nil
}

func timeoutMs(ctx context.Context) int {
	if d, ok := ctx.Deadline(); ok {
		return int(max(time.Until(d), 100*time.Millisecond).Milliseconds())
	}
	return 5000
}
