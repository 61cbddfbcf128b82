package lag

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/purchase-system/purchase-system/adapter/internal/backend"
)

// Source computes lag from the brokers with one Kafka client (franz-go)
// for every consumer group: its connections are bounded by the number of
// brokers, not of groups.
//
// Questions are answered in rounds. Each consumer group asked about while
// a round runs waits for the next one, and a round reads what all of its
// groups need with one request of each kind, which the client splits by
// broker: the committed offsets of every group (OffsetFetch, many groups
// per request, sent to each group's coordinator), the metadata of every
// topic concerned, and the log start and last stable offsets of all their
// partitions (ListOffsets, to each partition's leader). So the cost of a
// round grows with the partitions read, and the number of requests with
// the number of brokers, however many groups and HPAs ask.
//
// librdkafka's admin API reads one group per call and crashed when a
// group's coordinator moved (librdkafka #5040), which had made this source
// open one client per group; franz-go retries a moved coordinator and
// reports, per group, what failed.
type Source struct {
	cl        *kgo.Client
	creds     *Credentials // SASL's, changeable (SetCredentials)
	adm       *kadm.Client
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
	// StepTimeout bounds each of a round's steps (the committed offsets;
	// then metadata and log offsets): a group whose coordinator does not
	// answer fails alone, after this, and does not hold the others.
	StepTimeout time.Duration
	// GroupIdle: what is kept about a group (its consumption history, its
	// "as last served" gauges) is dropped after this long without a
	// question about it.
	GroupIdle time.Duration

	mu    sync.Mutex
	rates map[[2]string]*Rate
	still map[stillKey]stillSince // for ExcludePersistentLag
	asked map[string]time.Time    // group: last question

	readerMu sync.Mutex // one marker count at a time (the client consumes)

	pendingMu sync.Mutex
	pending   []*call
	wake      chan struct{}
	rounds    chan struct{} // one token per round allowed to run at once
	stop      chan struct{}
	stopped   sync.WaitGroup

	readyOnce sync.Once
	ready     chan struct{}
}

// Metrics are the lag source's own metrics.
type Metrics struct {
	computeSeconds prometheus.Histogram
	roundGroups    prometheus.Histogram
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
			Name: "adapter_kafka_lag_compute_seconds", Help: "Time to compute one consumer group's lag from the brokers, waiting for its round included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		roundGroups: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "adapter_kafka_lag_round_groups", Help: "Consumer groups read together in one round of requests to the brokers.",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000},
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_kafka_consumergroup_lag", Help: "Consumer group lag in messages, as last served (newest offset minus committed, summed over the topic's partitions).",
		}, []string{LabelGroup, LabelTopic}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "adapter_kafka_consumergroup_lag_seconds", Help: "Estimated seconds for the group to consume its lag, as last served.",
		}, []string{LabelGroup, LabelTopic}),
	}
	if reg != nil {
		reg.MustRegister(m.computeSeconds, m.roundGroups, m.lag, m.lagSeconds)
	}
	return m
}

// Rounds that may run at once: while one waits on a slow coordinator, the
// next groups are read in another.
const maxRounds = 4

// Groups read in one round at most: a round's answers stay a few MiB.
const maxRoundGroups = 1000

// NewSource creates the client from librdkafka properties
// (bootstrap.servers at least; see ClientOptions) and starts answering.
// extra are further client options (a logger); bm and m may be nil.
func NewSource(props map[string]string, bm *backend.Metrics, m *Metrics, extra ...kgo.Opt) (*Source, error) {
	creds := &Credentials{}
	opts, err := ClientOptions(props, creds)
	if err != nil {
		return nil, err
	}
	// Asking about a topic (a selector naming one) must never create it:
	// the client's own metadata requests do not (kgo.AllowAutoTopicCreation
	// is not set), nor do the round's (logOffsets).
	opts = append(opts,
		// The marker count consumes with this client: only committed
		// records, and the markers themselves, to know where a span ends.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(50*time.Millisecond),
	)
	opts = append(opts, extra...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	if bm == nil {
		bm = backend.NewMetrics(nil)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	s := &Source{cl: cl, adm: kadm.NewClient(cl), bootstrap: props["bootstrap.servers"], creds: creds,
		obs:        bm.For("kafka", "metadata", "committed_offsets", "end_offsets", "start_offsets", "marker_check"),
		metrics:    m,
		RateWindow: 2 * time.Minute, DrainCap: 3600, MarkerCheckMax: 10, StepTimeout: 4 * time.Second, GroupIdle: 10 * time.Minute,
		rates: map[[2]string]*Rate{}, still: map[stillKey]stillSince{}, asked: map[string]time.Time{},
		wake: make(chan struct{}, 1), rounds: make(chan struct{}, maxRounds), stop: make(chan struct{}),
		ready: make(chan struct{})}
	s.stopped.Add(1)
	go s.dispatch()
	return s, nil
}

// SetCredentials changes the SASL user and password the next
// connections authenticate with (the properties file changed; the
// connections open now stay as they are).
func (s *Source) SetCredentials(user, password string) { s.creds.Set(user, password) }

// Ready reports whether the brokers have answered at least once.
func (s *Source) Ready() error {
	select {
	case <-s.ready:
		return nil
	default:
	}
	if err := s.Reachable(); err != nil {
		return err
	}
	s.readyOnce.Do(func() { close(s.ready) })
	return nil
}

// Reachable asks the brokers for metadata now (2 s at most): what the
// adapter's /readyz shows for Kafka.
func (s *Source) Reachable() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	_, err := s.adm.BrokerMetadata(ctx)
	s.obs.Observe("metadata", t0, err)
	if err != nil {
		return s.wrap("metadata", err)
	}
	return nil
}

// Close stops the rounds (questions waiting get an error) and the client.
func (s *Source) Close() {
	close(s.stop)
	s.stopped.Wait()
	s.cl.Close()
}

func (s *Source) wrap(what string, err error) error {
	if h := hint(err); h != "" {
		return fmt.Errorf("kafka at %s: %s: %w (%s)", s.bootstrap, what, err, h)
	}
	return fmt.Errorf("kafka at %s: %s: %w", s.bootstrap, what, err)
}

// call is one question waiting for its round.
type call struct {
	group  string
	topics []string // empty: every topic the group committed on
	ctx    context.Context
	done   chan result
}

type result struct {
	parts []Partition
	err   error
}

// GroupPartitions fetches, for every partition of the topics (or of every
// topic the group committed on), the log start, the last stable offset and
// the group's committed offset, in the next round. Any error — an
// unreachable broker, a coordinator that moved, a partition missing from
// an answer — is returned: lag that cannot be known is not 0.
func (s *Source) GroupPartitions(ctx context.Context, group string, topics []string) ([]Partition, error) {
	c := &call{group: group, topics: topics, ctx: ctx, done: make(chan result, 1)}
	s.mu.Lock()
	s.asked[group] = time.Now()
	s.mu.Unlock()
	s.pendingMu.Lock()
	s.pending = append(s.pending, c)
	s.pendingMu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	select {
	case r := <-c.done:
		return r.parts, r.err
	case <-ctx.Done():
		return nil, s.wrap("waiting for the offsets", ctx.Err())
	case <-s.stop:
		return nil, s.wrap("waiting for the offsets", errors.New("the lag source is closed"))
	}
}

// dispatch starts a round whenever questions wait and a round may run;
// questions arriving meanwhile gather for the next round.
func (s *Source) dispatch() {
	defer s.stopped.Done()
	var running sync.WaitGroup
	defer running.Wait()
	forget := time.NewTicker(time.Minute)
	defer forget.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-forget.C:
			s.forgetIdle()
			continue
		case <-s.wake:
		}
		select {
		case s.rounds <- struct{}{}:
		case <-s.stop:
			return
		}
		s.pendingMu.Lock()
		calls := s.pending
		if len(calls) > maxRoundGroups {
			calls, s.pending = calls[:maxRoundGroups], calls[maxRoundGroups:]
			select {
			case s.wake <- struct{}{}:
			default:
			}
		} else {
			s.pending = nil
		}
		s.pendingMu.Unlock()
		if len(calls) == 0 {
			<-s.rounds
			continue
		}
		running.Add(1)
		go func() {
			defer running.Done()
			defer func() { <-s.rounds }()
			s.round(calls)
		}()
	}
}

// roundContext ends when the latest of the calls' deadlines passes (or the
// source closes): a caller that gave up does not cut the others short.
func (s *Source) roundContext(calls []*call) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(2 * s.StepTimeout)
	for _, c := range calls {
		if d, ok := c.ctx.Deadline(); ok && d.After(deadline) {
			deadline = d
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

type stillKey struct {
	group, topic string
	partition    int32
}

type tpKey struct {
	topic     string
	partition int32
}

// round answers calls with one request of each kind.
func (s *Source) round(calls []*call) {
	ctx, cancel := s.roundContext(calls)
	defer cancel()
	s.metrics.roundGroups.Observe(float64(len(calls)))

	// 1. Committed offsets of every group, in one OffsetFetch per
	// coordinator.
	groups := map[string]bool{}
	var names []string
	for _, c := range calls {
		if !groups[c.group] {
			groups[c.group] = true
			names = append(names, c.group)
		}
	}
	stepCtx, stepCancel := context.WithTimeout(ctx, s.StepTimeout)
	t0 := time.Now()
	fetched := s.adm.FetchManyOffsets(stepCtx, names...)
	stepCancel()
	var fetchErr error
	if fetched.AllFailed() {
		for _, r := range fetched {
			fetchErr = r.Err
			break
		}
	}
	s.obs.Observe("committed_offsets", t0, fetchErr)
	committed := map[string]map[tpKey]int64{}
	groupErr := map[string]error{}
	for _, g := range names {
		r, ok := fetched[g]
		switch {
		case !ok:
			groupErr[g] = s.wrap("committed offsets", errors.New("the brokers' answer left the group out"))
			continue
		case r.Err != nil:
			groupErr[g] = s.wrap("committed offsets", r.Err)
			continue
		}
		offs := map[tpKey]int64{}
		var errs []string
		r.Fetched.Each(func(o kadm.OffsetResponse) {
			switch {
			case o.Err != nil:
				errs = append(errs, fmt.Sprintf("%s[%d]: %v", o.Topic, o.Partition, o.Err))
			case o.At >= 0:
				offs[tpKey{o.Topic, o.Partition}] = o.At
			}
		})
		if len(errs) > 0 {
			sort.Strings(errs)
			groupErr[g] = s.wrap("committed offsets", errors.New(strings.Join(errs, "; ")))
			continue
		}
		committed[g] = offs
	}

	// 2. The topics each call concerns: the named ones, or those its group
	// committed on.
	topicsOf := make([][]string, len(calls))
	need := map[string]bool{}
	for i, c := range calls {
		if groupErr[c.group] != nil {
			continue
		}
		topics := c.topics
		if len(topics) == 0 {
			seen := map[string]bool{}
			for k := range committed[c.group] {
				if !seen[k.topic] && !strings.HasPrefix(k.topic, "__") {
					seen[k.topic] = true
					topics = append(topics, k.topic)
				}
			}
			sort.Strings(topics)
		}
		topicsOf[i] = topics
		for _, t := range topics {
			need[t] = true
		}
	}

	// 3. Their partitions (every partition: one the group never committed
	// on has lag all the same), log start and last stable offsets.
	stepCtx, stepCancel = context.WithTimeout(ctx, s.StepTimeout)
	defer stepCancel()
	logs, topicErr := s.logOffsets(stepCtx, need)
	if len(groupErr) > 0 || len(topicErr) > 0 {
		// A failed read may mean the client's map of node ids to
		// addresses is stale: a Kafka replaced behind the same Service
		// leaves the old node id at the Service's address, which now
		// reaches another broker, and every OffsetFetch sent there is
		// NOT_COORDINATOR. Nothing in Kafka 4.1's answers makes the
		// client look again before its metadata max age (5 min), so the
		// round asks. franz-go spaces refreshes by its metadata min age
		// (5 s): at most one Metadata request per 5 s however many fail.
		s.cl.ForceMetadataRefresh()
	}

	// 4. Each call's partitions; short spans are counted for markers.
	type answer struct {
		parts []Partition
		err   error
	}
	answers := make([]answer, len(calls))
	var spans []span
	for i, c := range calls {
		if err := groupErr[c.group]; err != nil {
			answers[i].err = err
			continue
		}
		if len(topicsOf[i]) == 0 {
			answers[i].err = fmt.Errorf("the group has committed no offsets: name its topic in the selector (%s=...)", LabelTopic)
			continue
		}
		var parts []Partition
		for _, t := range topicsOf[i] {
			if err := topicErr[t]; err != nil {
				answers[i].err = err
				break
			}
			for _, p := range logs[t] {
				c, ok := committed[c.group][tpKey{t, p.partition}]
				if !ok {
					c = NoOffset
				}
				part := Partition{Topic: t, Partition: p.partition, Start: p.start, End: p.end, Committed: c}
				if s.countsRecords(part) {
					spans = append(spans, span{t, p.partition, part.Committed, part.End})
				}
				parts = append(parts, part)
			}
		}
		if answers[i].err == nil {
			answers[i].parts = parts
		}
	}
	if len(spans) > 0 {
		counts, err := s.countConsumable(ctx, spans)
		for i := range answers {
			for j, p := range answers[i].parts {
				if s.countsRecords(p) {
					if err != nil {
						answers[i].err, answers[i].parts = s.wrap("counting records after the commit", err), nil
						break
					}
					n := counts.between(tpKey{p.Topic, p.Partition}, p.Committed, p.End)
					answers[i].parts[j].Consumable = &n
				}
			}
		}
	}
	for i, c := range calls {
		c.done <- result{answers[i].parts, answers[i].err}
	}
}

// partitionLog is one partition's log start and last stable offset.
type partitionLog struct {
	partition  int32
	start, end int64
}

// logOffsets reads the partitions of topics (metadata), then their log
// start and last stable offsets (ListOffsets, split by leader). A topic
// with any failure gets an error naming it; so does a partition missing
// from an answer (never a 0).
func (s *Source) logOffsets(ctx context.Context, topics map[string]bool) (map[string][]partitionLog, map[string]error) {
	errs := map[string]error{}
	if len(topics) == 0 {
		return nil, errs
	}
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	sort.Strings(names)
	fail := func(what string, err error) (map[string][]partitionLog, map[string]error) {
		for _, t := range names {
			if errs[t] == nil {
				errs[t] = s.wrap(what, err)
			}
		}
		return nil, errs
	}

	md := kmsg.NewPtrMetadataRequest()
	md.AllowAutoTopicCreation = false
	for _, t := range names {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		md.Topics = append(md.Topics, rt)
	}
	t0 := time.Now()
	mdResp, err := md.RequestWith(ctx, s.cl)
	s.obs.Observe("metadata", t0, err)
	if err != nil {
		return fail("metadata", err)
	}
	logs := map[string][]partitionLog{}
	for _, t := range mdResp.Topics {
		if t.Topic == nil || !topics[*t.Topic] {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			errs[*t.Topic] = s.wrap("metadata of topic "+*t.Topic, err)
			continue
		}
		for _, p := range t.Partitions {
			logs[*t.Topic] = append(logs[*t.Topic], partitionLog{partition: p.Partition})
		}
	}
	for _, t := range names {
		if errs[t] == nil && len(logs[t]) == 0 {
			errs[t] = s.wrap("metadata of topic "+t, errors.New("the brokers' answer has no partitions for it"))
		}
	}
	for t, ps := range logs {
		sort.Slice(ps, func(i, j int) bool { return ps[i].partition < ps[j].partition })
		logs[t] = ps
	}

	var wg sync.WaitGroup
	var start, end map[tpKey]int64
	var startErrs, endErrs map[string]error
	wg.Add(2)
	go func() { defer wg.Done(); start, startErrs = s.listOffsets(ctx, logs, errs, -2, "start_offsets") }()
	go func() { defer wg.Done(); end, endErrs = s.listOffsets(ctx, logs, errs, -1, "end_offsets") }()
	wg.Wait()
	for _, m := range []map[string]error{startErrs, endErrs} {
		for t, err := range m {
			if errs[t] == nil {
				errs[t] = err
			}
		}
	}
	for t, ps := range logs {
		if errs[t] != nil {
			delete(logs, t)
			continue
		}
		for i := range ps {
			k := tpKey{t, ps[i].partition}
			ps[i].start, ps[i].end = start[k], end[k]
		}
	}
	return logs, errs
}

// listOffsets asks each partition's leader for the offset at timestamp -2
// (log start) or -1 (with read_committed: the last stable offset).
func (s *Source) listOffsets(ctx context.Context, logs map[string][]partitionLog, skip map[string]error, timestamp int64, kind string) (map[tpKey]int64, map[string]error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	req.IsolationLevel = 1 // read_committed
	want := 0
	for t, ps := range logs {
		if skip[t] != nil {
			continue
		}
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = t
		for _, p := range ps {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition = p.partition
			rp.Timestamp = timestamp
			rp.CurrentLeaderEpoch = -1
			rt.Partitions = append(rt.Partitions, rp)
			want++
		}
		req.Topics = append(req.Topics, rt)
	}
	out := make(map[tpKey]int64, want)
	errs := map[string]error{}
	if want == 0 {
		return out, errs
	}
	t0 := time.Now()
	shards := s.cl.RequestSharded(ctx, req)
	var firstErr error
	for _, sh := range shards {
		r := sh.Req.(*kmsg.ListOffsetsRequest)
		if sh.Err != nil {
			firstErr = sh.Err
			for _, t := range r.Topics {
				errs[t.Topic] = s.wrap(kind+" of topic "+t.Topic, sh.Err)
			}
			continue
		}
		for _, t := range sh.Resp.(*kmsg.ListOffsetsResponse).Topics {
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
					firstErr = err
					errs[t.Topic] = s.wrap(fmt.Sprintf("%s of %s[%d]", kind, t.Topic, p.Partition), err)
					continue
				}
				if p.Offset < 0 {
					// No error, no offset: not an answer (librdkafka
					// passes this on as offset -1001).
					firstErr = fmt.Errorf("offset %d", p.Offset)
					errs[t.Topic] = s.wrap(kind, fmt.Errorf("no offset returned for %s[%d] (the broker answered %d)", t.Topic, p.Partition, p.Offset))
					continue
				}
				out[tpKey{t.Topic, p.Partition}] = p.Offset
			}
		}
	}
	s.obs.Observe(kind, t0, firstErr)
	for t, ps := range logs {
		if skip[t] != nil || errs[t] != nil {
			continue
		}
		for _, p := range ps {
			if _, ok := out[tpKey{t, p.partition}]; !ok {
				errs[t] = s.wrap(kind, fmt.Errorf("no offset returned for %s[%d]", t, p.partition))
				break
			}
		}
	}
	return out, errs
}

// forgetIdle drops what is kept about groups nobody asked about for
// GroupIdle: their consumption history and their last values, which would
// read as current on a dashboard.
func (s *Source) forgetIdle() {
	s.mu.Lock()
	var idle []string
	for g, at := range s.asked {
		if time.Since(at) > s.GroupIdle {
			idle = append(idle, g)
			delete(s.asked, g)
		}
	}
	for k := range s.rates {
		if _, ok := s.asked[k[0]]; !ok {
			delete(s.rates, k)
		}
	}
	for k := range s.still {
		if _, ok := s.asked[k.group]; !ok {
			delete(s.still, k)
		}
	}
	s.mu.Unlock()
	for _, g := range idle {
		s.metrics.lag.DeletePartialMatch(map[string]string{LabelGroup: g})
		s.metrics.lagSeconds.DeletePartialMatch(map[string]string{LabelGroup: g})
	}
}

// countsRecords reports whether p's short lag is read record by record, so
// transaction markers are not taken for messages.
func (s *Source) countsRecords(p Partition) bool {
	d := p.End - p.Committed
	return p.Committed >= p.Start && d > 0 && d <= s.MarkerCheckMax
}
