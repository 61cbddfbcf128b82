package rules

import (
	"strings"
	"testing"
)

func TestLagAccess(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
kafkaLag:
  access:
    - {namespace: shop, consumerGroups: [orders], topics: [orders]}
    - {namespace: ops, consumerGroups: ["*"], topics: ["*"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns             string
		groups, topics []string
		want           string
	}{
		{"shop", []string{"orders"}, []string{"orders"}, ""},
		{"shop", []string{"orders"}, nil, "without naming its topic"},
		{"shop", []string{"payments"}, []string{"orders"}, `may not read the lag of consumer group payments`},
		{"shop", []string{"orders"}, []string{"payments"}, "on topics payments"},
		{"other", []string{"orders"}, []string{"orders"}, `namespace "other" may not read Kafka lag`},
		{"ops", []string{"anything"}, nil, ""},
	} {
		err := cfg.KafkaLag.Allow(tc.ns, tc.groups, tc.topics)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s %v %v: %v, want %q", tc.ns, tc.groups, tc.topics, err, tc.want)
		}
	}
	// Without the section: the purchase system's own group, in its namespace.
	def, _ := Parse("c.yaml", []byte("rules: []\n"))
	if err := def.KafkaLag.Allow("purchase-system", []string{"purchase-consumer-group"}, []string{"purchases"}); err != nil {
		t.Fatal(err)
	}
	if err := def.KafkaLag.Allow("default", []string{"purchase-consumer-group"}, []string{"purchases"}); err == nil {
		t.Fatal("another namespace reads the purchase system's lag by default")
	}
	if _, err := Parse("c.yaml", []byte("kafkaLag:\n  access:\n    - {namespace: x}\n")); err == nil || !strings.Contains(err.Error(), "kafkaLag.access[0]") {
		t.Fatalf("a grant without groups: %v", err)
	}
}

// KEDA's partitionLimitation ("0,2,10-20") is not a label value: it lives
// in the grant, checked when the file is loaded.
func TestPartitionLimitationInTheGrant(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
kafkaLag:
  access:
    - {namespace: shop, consumerGroups: [orders], topics: [orders], partitionLimitation: "0,2,10-20"}
    - {namespace: shop, consumerGroups: ["*"], topics: ["*"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.KafkaLag.PartitionLimitation("shop", []string{"orders"}, []string{"orders"}); got != "0,2,10-20" {
		t.Fatalf("orders: %q", got)
	}
	if got := cfg.KafkaLag.PartitionLimitation("shop", []string{"payments"}, []string{"payments"}); got != "" {
		t.Fatalf("payments: %q, want every partition", got)
	}
	_, err = Parse("c.yaml", []byte(`
kafkaLag:
  access:
    - {namespace: shop, consumerGroups: [orders], partitionLimitation: "0,2-"}
`))
	if err == nil || !strings.Contains(err.Error(), `kafkaLag.access[0]: partitionLimitation "0,2-": "2-" is not a partition or a range`) {
		t.Fatalf("err %v", err)
	}
}
