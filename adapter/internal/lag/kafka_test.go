package lag_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

// brokers runs a test against the in-process broker and, when present,
// the real Apache Kafka broker.
func brokers(t *testing.T, f func(t *testing.T, bootstrap string, real bool)) {
	t.Run("kfake", func(t *testing.T) {
		_, addr := testkafka.Fake(t)
		f(t, addr, false)
	})
	t.Run("apache-kafka", func(t *testing.T) {
		f(t, testkafka.Real(t), true)
	})
}

func unique(prefix string) string { return prefix + "-" + strconv.FormatInt(time.Now().UnixNano(), 36) }

func createTopic(t testing.TB, bootstrap, topic string, partitions int) {
	t.Helper()
	a, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": bootstrap})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := a.CreateTopics(ctx, []kafka.TopicSpecification{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}})
	if err != nil || res[0].Error.Code() != kafka.ErrNoError {
		t.Fatalf("create topic: %v %v", err, res)
	}
}

// produce writes counts[i] messages to partition i; with txn, each
// partition's messages go in one committed transaction.
func produce(t testing.TB, bootstrap, topic string, counts []int, txn bool) {
	t.Helper()
	cfg := kafka.ConfigMap{"bootstrap.servers": bootstrap, "enable.idempotence": true, "acks": "all"}
	if txn {
		cfg["transactional.id"] = unique("txn")
	}
	p, err := kafka.NewProducer(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Flush counts undrained delivery reports as outstanding.
	go func() {
		for ev := range p.Events() {
			if m, ok := ev.(*kafka.Message); ok && m.TopicPartition.Error != nil {
				t.Errorf("delivery: %v", m.TopicPartition.Error)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if txn {
		if err := p.InitTransactions(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for part, n := range counts {
		if txn {
			if err := p.BeginTransaction(); err != nil {
				t.Fatal(err)
			}
		}
		for i := range n {
			if err := p.Produce(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: int32(part)}, Value: []byte(fmt.Sprint(i))}, nil); err != nil {
				t.Fatal(err)
			}
		}
		if txn {
			if err := p.CommitTransaction(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if left := p.Flush(30000); left != 0 {
		t.Fatalf("%d messages not delivered", left)
	}
}

// consume reads consumed[i] messages from partition i as group and
// commits "last record + 1" for each partition it read from, as a
// consumer committing after its records does. -1 commits nothing.
func consume(t testing.TB, bootstrap, group, topic string, consumed []int) {
	t.Helper()
	c, err := kafka.NewConsumer(&kafka.ConfigMap{"bootstrap.servers": bootstrap, "group.id": group,
		"enable.auto.commit": false, "isolation.level": "read_committed", "fetch.wait.max.ms": 50})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var tps []kafka.TopicPartition
	for p, n := range consumed {
		if n > 0 {
			tps = append(tps, kafka.TopicPartition{Topic: &topic, Partition: int32(p), Offset: kafka.OffsetBeginning})
		}
	}
	if err := c.Assign(tps); err != nil {
		t.Fatal(err)
	}
	got := make([]int, len(consumed))
	last := make([]kafka.Offset, len(consumed))
	deadline := time.Now().Add(30 * time.Second)
	for done := false; !done; {
		if time.Now().After(deadline) {
			t.Fatalf("consumed %v of %v", got, consumed)
		}
		if m, ok := c.Poll(100).(*kafka.Message); ok && got[m.TopicPartition.Partition] < consumed[m.TopicPartition.Partition] {
			got[m.TopicPartition.Partition]++
			last[m.TopicPartition.Partition] = m.TopicPartition.Offset
			if got[m.TopicPartition.Partition] == consumed[m.TopicPartition.Partition] {
				_ = c.IncrementalUnassign([]kafka.TopicPartition{{Topic: &topic, Partition: m.TopicPartition.Partition}})
			}
		}
		done = true
		for p := range consumed {
			done = done && (consumed[p] <= 0 || got[p] == consumed[p])
		}
	}
	var commits []kafka.TopicPartition
	for p, n := range consumed {
		if n > 0 {
			commits = append(commits, kafka.TopicPartition{Topic: &topic, Partition: int32(p), Offset: last[p] + 1})
		}
	}
	if _, err := c.CommitOffsets(commits); err != nil {
		t.Fatal(err)
	}
}

func source(t testing.TB, bootstrap string) *lag.Source {
	t.Helper()
	s, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func fetchLag(t *testing.T, s *lag.Source, group, topic string) float64 {
	t.Helper()
	sel, _ := labels.Parse(fmt.Sprintf("consumergroup=%s,topic=%s", group, topic))
	f, err := lag.ParseSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	samples, err := s.Fetch(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	var lags []store.Sample
	for _, smp := range samples {
		if smp.Metric == lag.MetricLag {
			lags = append(lags, smp)
		}
	}
	if len(lags) != 1 || lags[0].Labels["consumergroup"] != group || lags[0].Labels["topic"] != topic {
		t.Fatalf("samples %+v", samples)
	}
	return lags[0].Value
}

func TestLagIsProducedMinusConsumed(t *testing.T) {
	brokers(t, func(t *testing.T, bootstrap string, real bool) {
		topic, group := unique("lag"), unique("group")
		createTopic(t, bootstrap, topic, 4)
		produced := []int{30, 20, 25, 7} // N = 82
		consumed := []int{30, 5, 11, -1} // M = 46; partition 3 never committed
		produce(t, bootstrap, topic, produced, false)
		consume(t, bootstrap, group, topic, consumed)
		reg := prometheus.NewRegistry()
		s, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, nil, lag.NewMetrics(reg))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := fetchLag(t, s, group, topic); got != 82-46 {
			t.Fatalf("lag = %v, want N-M = %d", got, 82-46)
		}
		// What the HPA was served is also on the self-metrics, for
		// dashboards and alerts.
		if err := servedLagIs(reg, group, topic, 36); err != nil {
			t.Fatal(err)
		}
	})
}

func TestTransactionMarkersAreNotLag(t *testing.T) {
	brokers(t, func(t *testing.T, bootstrap string, real bool) {
		topic, group := unique("txn"), unique("group")
		createTopic(t, bootstrap, topic, 2)
		produce(t, bootstrap, topic, []int{10, 6}, true)
		// All of partition 0, 4 of partition 1's 6: each partition also
		// holds one commit marker after its records.
		consume(t, bootstrap, group, topic, []int{10, 4})
		if got := fetchLag(t, source(t, bootstrap), group, topic); got != 2 {
			t.Fatalf("lag = %v, want 2 (the 2 unread records; the markers are not lag)", got)
		}
	})
}

// TestLagMatchesKafkaConsumerGroupsTool compares with the numbers Kafka's
// own kafka-consumer-groups --describe prints, on the real broker.
func TestLagMatchesKafkaConsumerGroupsTool(t *testing.T) {
	bootstrap := testkafka.Real(t)
	topic, group := unique("tool"), unique("group")
	createTopic(t, bootstrap, topic, 3)
	produce(t, bootstrap, topic, []int{40, 13, 27}, false)
	consume(t, bootstrap, group, topic, []int{12, 13, 1})
	ours := fetchLag(t, source(t, bootstrap), group, topic)

	root, err := testproc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "kafka.sh"), "run",
		"org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
		"--bootstrap-server", bootstrap, "--describe", "--group", group).CombinedOutput()
	if err != nil {
		t.Fatalf("kafka-consumer-groups: %v\n%s", err, out)
	}
	var theirs, rows int
	lagCol := -1
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i, h := range f {
			if h == "LAG" {
				lagCol = i
			}
		}
		if lagCol >= 0 && len(f) > lagCol && len(f) > 1 && f[1] == topic {
			n, err := strconv.Atoi(f[lagCol])
			if err != nil {
				t.Fatalf("LAG column %q in %q", f[lagCol], line)
			}
			theirs += n
			rows++
		}
	}
	if rows != 3 {
		t.Fatalf("kafka-consumer-groups listed %d partitions of %s:\n%s", rows, topic, out)
	}
	if ours != float64(theirs) || theirs != 28+0+26 {
		t.Fatalf("adapter lag %v, kafka-consumer-groups %d, want both 54\n%s", ours, theirs, out)
	}
}

func TestUnreachableBrokerIsAnErrorNotZero(t *testing.T) {
	s, err := lag.NewSource(map[string]string{"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": "1000"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	samples, err := s.Fetch(ctx, lag.Query{Groups: []string{"g"}, Topics: []string{"t"}})
	if err == nil || !strings.Contains(err.Error(), "kafka at 127.0.0.1:1") || len(samples) != 0 {
		t.Fatalf("samples %v, err %v: want an error naming the broker, no value", samples, err)
	}
}

// Asking for the lag on a topic that does not exist is an error, and does
// not create it (the test broker auto-creates topics, as a stock one does).
func TestAskingAboutATopicDoesNotCreateIt(t *testing.T) {
	brokers(t, func(t *testing.T, bootstrap string, real bool) {
		topic := unique("never-created")
		s := source(t, bootstrap)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		samples, err := s.Fetch(ctx, lag.Query{Groups: []string{unique("group")}, Topics: []string{topic}})
		if err == nil || len(samples) != 0 {
			t.Fatalf("samples %v, err %v: want an error for a topic that does not exist", samples, err)
		}
		a, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": bootstrap, "allow.auto.create.topics": false})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		time.Sleep(500 * time.Millisecond)
		md, err := a.GetMetadata(nil, true, 5000)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := md.Topics[topic]; ok {
			t.Fatalf("topic %s was created by asking for its lag", topic)
		}
	})
}

func TestSelectorParsing(t *testing.T) {
	for sel, wantErr := range map[string]string{
		"consumergroup=g,topic=t":     "",
		"consumergroup in (a,b)":      "",
		"consumergroup!=g":            "only consumergroup and topic with = or in",
		"consumergroup=g,partition=1": `unknown label "partition"`,
		// Whose lag? Without a group, groups that never read the topic
		// would count its whole log.
		"topic=t": "names no consumer group",
		"":        "names no consumer group",
	} {
		s, _ := labels.Parse(sel)
		_, err := lag.ParseSelector(s)
		if (wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), wantErr)) {
			t.Errorf("%s: err %v, want %q", sel, err, wantErr)
		}
	}
}

// While the group's coordinator moves, brokers answer NOT_COORDINATOR: the
// lag is unknown, and the HPA must get an error (and hold), not a 0.
func TestCoordinatorMovingIsAnErrorNotZero(t *testing.T) {
	topic, group := unique("moving"), unique("group")
	cluster, bootstrap := testkafka.Fake(t, topic)
	produce(t, bootstrap, topic, []int{5, 5, 5, 5, 5}, false)
	consume(t, bootstrap, group, topic, []int{5, 5, 1, 0, 0})
	s := source(t, bootstrap)
	if got := fetchLag(t, s, group, topic); got != 14 {
		t.Fatalf("lag before the move = %v, want 14", got)
	}

	cluster.ControlKey(int16(kmsg.OffsetFetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		r := req.(*kmsg.OffsetFetchRequest)
		resp := r.ResponseKind().(*kmsg.OffsetFetchResponse)
		resp.Version = r.Version
		code := kerr.NotCoordinator.Code
		// A complete answer (every requested partition present), as a
		// broker that lost the coordinatorship gives it.
		resp.ErrorCode = code
		for _, rt := range r.Topics {
			t := kmsg.OffsetFetchResponseTopic{Topic: rt.Topic}
			for _, p := range rt.Partitions {
				t.Partitions = append(t.Partitions, kmsg.OffsetFetchResponseTopicPartition{Partition: p, Offset: -1, ErrorCode: code})
			}
			resp.Topics = append(resp.Topics, t)
		}
		for _, g := range r.Groups {
			rg := kmsg.OffsetFetchResponseGroup{Group: g.Group, ErrorCode: code}
			for _, gt := range g.Topics {
				t := kmsg.OffsetFetchResponseGroupTopic{Topic: gt.Topic}
				for _, p := range gt.Partitions {
					t.Partitions = append(t.Partitions, kmsg.OffsetFetchResponseGroupTopicPartition{Partition: p, Offset: -1, ErrorCode: code})
				}
				rg.Topics = append(rg.Topics, t)
			}
			resp.Groups = append(resp.Groups, rg)
		}
		return resp, nil, true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	samples, err := s.Fetch(ctx, lag.Query{Groups: []string{group}, Topics: []string{topic}})
	if err == nil || len(samples) != 0 {
		t.Fatalf("samples %v, err %v: want an error and no value while the coordinator moves", samples, err)
	}
	t.Logf("error served: %v", err)
}

// connections counts the established TCP connections to port on
// loopback (both ends of an in-process broker's connections are this
// process's: only the client ends, whose remote port is the broker's,
// count).
func connections(port int) int {
	n := 0
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(l)
			if len(fs) < 4 || fs[3] != "01" { // 01: ESTABLISHED
				continue
			}
			if _, rport, ok := strings.Cut(fs[2], ":"); ok {
				if p, err := strconv.ParseInt(rport, 16, 32); err == nil && int(p) == port {
					n++
				}
			}
		}
	}
	return n
}

// Anyone who may create an HPA can name any consumer group, and a cluster
// has thousands. 3,000 groups asked about at once, as the store's refresh
// does: every one is answered right, in rounds of many groups, through
// connections bounded by the brokers (one here), not by the groups.
func TestThousandsOfGroupsShareOneClient(t *testing.T) {
	topic := unique("many")
	cluster, bootstrap := testkafka.Fake(t, topic)
	_ = cluster
	produce(t, bootstrap, topic, []int{100}, false)
	// The groups exist, each with a commit (kfake refuses offsets of a
	// group it never saw; Kafka would answer "none"): group i is at
	// offset i%100, so its lag is 100 - i%100.
	const groups = 3000
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	for i := range groups {
		var o kadm.Offsets
		o.AddOffset(topic, 0, int64(i%100), -1)
		if _, err := adm.CommitOffsets(ctx, fmt.Sprintf("g-%04d", i), o); err != nil {
			t.Fatal(err)
		}
	}
	cl.Close()
	_, portStr, _ := strings.Cut(bootstrap, ":")
	port, _ := strconv.Atoi(portStr)
	before := connections(port)

	reg := prometheus.NewRegistry()
	s, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, nil, lag.NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.MarkerCheckMax = 0 // every group's lag is data, not markers
	var wg sync.WaitGroup
	errs := make([]error, groups)
	lags := make([]float64, groups)
	for i := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			samples, err := s.Fetch(ctx, lag.Query{Groups: []string{fmt.Sprintf("g-%04d", i)}, Topics: []string{topic}})
			if err == nil && len(samples) > 0 {
				lags[i] = samples[0].Value
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i := range groups {
		if errs[i] != nil || lags[i] != float64(100-i%100) {
			t.Fatalf("group %d: lag %v, err %v; want %d", i, lags[i], errs[i], 100-i%100)
		}
	}
	open := connections(port) - before
	mf, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var rounds uint64
	for _, f := range mf {
		if f.GetName() == "adapter_kafka_lag_round_groups" {
			rounds = f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Logf("%d groups answered in %d rounds through %d connections", groups, rounds, open)
	// kgo opens a few connections per broker (requests, fetches); one
	// client per group would open thousands.
	if open < 1 || open > 4 {
		t.Fatalf("%d connections to the one broker for %d groups: want between 1 and 4 (one client)", open, groups)
	}
	if rounds == 0 || rounds > groups/10 {
		t.Fatalf("%d rounds for %d groups asked at once: want them read together, not one by one", rounds, groups)
	}
}

// Explaining is read-only: Peek computes the lag as Fetch does but leaves
// the "as last served" gauges (and the consumption history behind lag
// seconds) as the HPA path left them.
func TestPeekRecordsNothing(t *testing.T) {
	_, bootstrap := testkafka.Fake(t)
	topic, group := unique("peek"), unique("group")
	createTopic(t, bootstrap, topic, 2)
	produce(t, bootstrap, topic, []int{10, 10}, false)
	consume(t, bootstrap, group, topic, []int{5, 5})
	reg := prometheus.NewRegistry()
	s, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, nil, lag.NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := fetchLag(t, s, group, topic); got != 10 {
		t.Fatalf("served lag = %v, want 10", got)
	}
	produce(t, bootstrap, topic, []int{7, 0}, false)
	sel, _ := labels.Parse(fmt.Sprintf("consumergroup=%s,topic=%s", group, topic))
	q, _ := lag.ParseSelector(sel)
	samples, err := s.Peek(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) == 0 || samples[0].Value != 17 {
		t.Fatalf("peeked %+v, want lag 17", samples)
	}
	if err := servedLagIs(reg, group, topic, 10); err != nil {
		t.Fatalf("a peek changed what the gauge says was served: %v", err)
	}
}

// servedLagIs checks the "as last served" lag gauge of one group and topic.
func servedLagIs(reg *prometheus.Registry, group, topic string, lag int) error {
	want := fmt.Sprintf(`
# HELP adapter_kafka_consumergroup_lag Consumer group lag in messages, as last served (newest offset minus committed, summed over the topic's partitions).
# TYPE adapter_kafka_consumergroup_lag gauge
adapter_kafka_consumergroup_lag{consumergroup=%q,topic=%q} %d
`, group, topic, lag)
	return testutil.GatherAndCompare(reg, strings.NewReader(want), "adapter_kafka_consumergroup_lag")
}

// A broker's ListOffsets answer that leaves a partition out, or gives it
// no offset without an error, is not a lag of 0 (librdkafka hands the
// latter on as offset -1001 with no error): the HPA gets an error.
func TestPartitionMissingFromTheOffsetsAnswerIsAnError(t *testing.T) {
	for _, how := range []string{"left out", "offset -1"} {
		t.Run(how, func(t *testing.T) {
			topic, group := unique("missing"), unique("group")
			cluster, bootstrap := testkafka.Fake(t, topic)
			produce(t, bootstrap, topic, []int{5, 5, 5, 5, 5}, false)
			consume(t, bootstrap, group, topic, []int{5, 5, 5, 5, 5})
			s := source(t, bootstrap)
			if got := fetchLag(t, s, group, topic); got != 0 {
				t.Fatalf("lag = %v, want 0", got)
			}
			produce(t, bootstrap, topic, []int{0, 0, 9, 0, 0}, false)
			cluster.ControlKey(int16(kmsg.ListOffsets), func(req kmsg.Request) (kmsg.Response, error, bool) {
				cluster.KeepControl()
				r := req.(*kmsg.ListOffsetsRequest)
				resp := r.ResponseKind().(*kmsg.ListOffsetsResponse)
				resp.Version = r.Version
				for _, rt := range r.Topics {
					t := kmsg.NewListOffsetsResponseTopic()
					t.Topic = rt.Topic
					for _, p := range rt.Partitions {
						rp := kmsg.NewListOffsetsResponseTopicPartition()
						rp.Partition, rp.Offset, rp.LeaderEpoch = p.Partition, 5, -1
						if p.Partition == 2 {
							if how == "left out" {
								continue
							}
							rp.Offset = -1
						}
						t.Partitions = append(t.Partitions, rp)
					}
					resp.Topics = append(resp.Topics, t)
				}
				return resp, nil, true
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			samples, err := s.Fetch(ctx, lag.Query{Groups: []string{group}, Topics: []string{topic}})
			if err == nil || len(samples) != 0 || !strings.Contains(err.Error(), "no offset returned for "+topic+"[2]") {
				t.Fatalf("samples %v, err %v: want an error naming partition 2, no value", samples, err)
			}
		})
	}
}
