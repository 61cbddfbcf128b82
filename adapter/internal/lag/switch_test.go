package lag_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/testkit/faultproxy"
)

// kafkaAt writes produced records to partition 0 of topic and commits
// committed for group, through a client of its own.
func kafkaAt(t *testing.T, bootstrap, group, topic string, produced, committed int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range produced {
		if err := cl.ProduceSync(ctx, &kgo.Record{Partition: 0, Value: []byte(fmt.Sprint(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	var o kadm.Offsets
	o.AddOffset(topic, 0, int64(committed), -1)
	if _, err := kadm.NewClient(cl).CommitOffsets(ctx, group, o); err != nil {
		t.Fatal(err)
	}
}

// TestAKafkaReplacedUnderTheSameAddressIsReadAgain: a Kafka cluster is
// replaced by another behind the same bootstrap address (a Kubernetes
// Service), with other node ids and addresses, as the e2e overlays switch
// between one broker and three. The adapter must read the new cluster's
// lag again without a restart. Before the fix it failed until its
// metadata aged out (5 min): one broker to three, the old node id stayed
// at the Service's address, which reached a broker that is not that
// node (NOT_COORDINATOR every time); three to one, the old node ids kept
// the addresses of brokers that are gone.
func TestAKafkaReplacedUnderTheSameAddressIsReadAgain(t *testing.T) {
	for _, c := range []struct{ from, to int }{{1, 3}, {3, 1}} {
		t.Run(fmt.Sprintf("%d to %d brokers", c.from, c.to), func(t *testing.T) {
			t.Parallel() // each waits out a dead connection's 10 s read timeout
			replaceKafka(t, c.from, c.to)
		})
	}
}

func replaceKafka(t *testing.T, from, to int) {
	topic := unique("switch")
	// Apache Kafka 4.1's request versions: its ApiVersions (v4) cannot
	// tell a client that an address now reaches another broker (v5 can,
	// and franz-go rebootstraps when told).
	kafka41 := kfake.MaxVersions(kversion.V4_1_0())
	newKafka, err := kfake.NewCluster(kfake.NumBrokers(to), kfake.SeedTopics(1, topic), kafka41)
	if err != nil {
		t.Fatal(err)
	}
	defer newKafka.Close()
	newAddrs := newKafka.ListenAddrs()
	// A group whose coordinator in the new cluster is node 0, an id the
	// old cluster had too.
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(newAddrs...))
	if err != nil {
		t.Fatal(err)
	}
	var group string
	for i := 0; group == ""; i++ {
		g := fmt.Sprintf("%s-group-%d", topic, i)
		coords := kadm.NewClient(cl).FindGroupCoordinators(ctx, g)
		if c := coords[g]; c.Err == nil && c.NodeID == 0 {
			group = g
		}
	}
	cl.Close()

	oldKafka, err := kfake.NewCluster(kfake.NumBrokers(from), kfake.SeedTopics(1, topic), kafka41)
	if err != nil {
		t.Fatal(err)
	}
	defer oldKafka.Close()
	oldAddrs := oldKafka.ListenAddrs()
	kafkaAt(t, oldAddrs[0], group, topic, 10, 7) // lag 3
	kafkaAt(t, newAddrs[0], group, topic, 20, 5) // lag 15

	// The Service reaches an old broker, then the new broker with the
	// highest id (with three, not node 0).
	svc := faultproxy.Start(t, oldAddrs[0])
	bootstrap := svc.Addr
	if from == 1 {
		bootstrap = oldAddrs[0]
	}
	var d net.Dialer
	dial := func(ctx context.Context, network, host string) (net.Conn, error) {
		if from == 1 && host == oldAddrs[0] {
			// A single broker advertises the Service's address (the
			// one-broker manifests do): node 0 is dialled there too.
			host = svc.Addr
		}
		return d.DialContext(ctx, network, host)
	}
	s, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, nil, nil, kgo.Dialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := fetchLag(t, s, group, topic); got != 3 {
		t.Fatalf("lag on the old Kafka = %v, want 3", got)
	}

	svc.Switch(newAddrs[len(newAddrs)-1])
	oldKafka.Close()
	t0 := time.Now()
	var last string
	for time.Since(t0) < 60*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		samples, err := s.Fetch(ctx, lag.Query{Groups: []string{group}, Topics: []string{topic}})
		cancel()
		for _, smp := range samples {
			if smp.Metric == lag.MetricLag && smp.Value == 15 {
				t.Logf("the new Kafka's lag served %s after the switch (last answer before: %s)", time.Since(t0).Round(time.Second), last)
				return
			}
		}
		last = fmt.Sprintf("%v %v", samples, err)
		time.Sleep(time.Second)
	}
	t.Fatalf("60 s after the switch the lag is still not the new Kafka's 15: %s", last)
}
