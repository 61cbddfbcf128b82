package kafkaenv_test

import (
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/servicekit/kafkaenv"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFromEnvDefaults(t *testing.T) {
	s, err := kafkaenv.FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if s.BootstrapServers != "localhost:9092" || s.Topic != "purchases" || s.DLQTopic != "purchases.dlq" ||
		s.GroupID != "purchase-consumer-group" || s.Partitions != 5 || s.ReplicationFactor != -1 {
		t.Fatalf("defaults = %+v", s)
	}
}

func TestFromEnvOverridesAndExtraConfig(t *testing.T) {
	s, err := kafkaenv.FromEnv(env(map[string]string{
		"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092", "KAFKA_TOPIC": "orders", "KAFKA_GROUP_ID": "g",
		"KAFKA_PARTITIONS": "12", "KAFKA_REPLICATION_FACTOR": "3",
		"KAFKA_EXTRA_CONFIG": "security.protocol=SSL, fetch.wait.max.ms=50",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Topic != "orders" || s.DLQTopic != "orders.dlq" || s.Partitions != 12 || s.ReplicationFactor != 3 {
		t.Fatalf("= %+v", s)
	}
	cfg := *s.ConsumerConfig()
	if cfg["security.protocol"] != "SSL" || cfg["fetch.wait.max.ms"] != "50" || cfg["group.id"] != "g" ||
		cfg["bootstrap.servers"] != "k1:9092,k2:9092" || cfg["enable.auto.commit"] != false {
		t.Fatalf("consumer config = %v", cfg)
	}
	p := *s.ProducerConfig(5e9)
	if p["enable.idempotence"] != true || p["acks"] != "all" || p["message.timeout.ms"] != 5000 {
		t.Fatalf("producer config = %v", p)
	}
}

func TestFromEnvRejectsNonsense(t *testing.T) {
	for k, v := range map[string]string{
		"KAFKA_PARTITIONS": "0", "KAFKA_REPLICATION_FACTOR": "zero", "KAFKA_EXTRA_CONFIG": "novalue",
	} {
		_, err := kafkaenv.FromEnv(env(map[string]string{k: v}))
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%q: err = %v, want one naming the variable", k, v, err)
		}
	}
}

func TestConsumerFailsOverInSecondsUnlessTheBrokerOwnsTheTimeouts(t *testing.T) {
	for _, c := range []struct {
		extra   string
		session any
	}{
		{"", 10000},
		{"session.timeout.ms=30000", "30000"}, // the operator's choice wins
		{"group.protocol=consumer", nil},      // KIP-848: the broker's setting
	} {
		s, err := kafkaenv.FromEnv(env(map[string]string{"KAFKA_EXTRA_CONFIG": c.extra}))
		if err != nil {
			t.Fatal(err)
		}
		cfg := *s.ConsumerConfig()
		if cfg["session.timeout.ms"] != c.session {
			t.Errorf("KAFKA_EXTRA_CONFIG=%q: session.timeout.ms = %v, want %v", c.extra, cfg["session.timeout.ms"], c.session)
		}
		if _, set := cfg["heartbeat.interval.ms"]; set != (c.session != nil) {
			t.Errorf("KAFKA_EXTRA_CONFIG=%q: heartbeat.interval.ms set = %v", c.extra, set)
		}
	}
}
