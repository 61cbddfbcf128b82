// Package kafkaenv reads the Kafka settings both services take from the
// environment and turns them into librdkafka configurations, so producer
// and consumer settings are decided in one place.
package kafkaenv

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// Defaults of the purchase pipeline.
const (
	DefaultBootstrapServers = "localhost:9092"
	DefaultTopic            = "purchases"
	DefaultGroupID          = "purchase-consumer-group"
	// DefaultPartitions caps useful consumer replicas: the consumer's HPA
	// scales to at most this many.
	DefaultPartitions = 5
)

// Settings are the Kafka settings of a service.
type Settings struct {
	BootstrapServers string
	Topic            string
	DLQTopic         string
	GroupID          string
	Partitions       int
	// ReplicationFactor for topics this service creates; -1 leaves it to
	// the broker's default.replication.factor.
	ReplicationFactor int
	// Extra holds librdkafka properties given as KAFKA_EXTRA_CONFIG
	// ("k=v,k=v"): security settings, or test tuning such as
	// fetch.wait.max.ms. They override the service's defaults.
	Extra kafka.ConfigMap
	// Logs, when set (NewLogChannel), receives librdkafka's own log lines
	// of the producers and consumers made from these settings, instead of
	// stderr.
	Logs chan kafka.LogEvent
}

// FromEnv reads KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, KAFKA_DLQ_TOPIC,
// KAFKA_GROUP_ID, KAFKA_PARTITIONS, KAFKA_REPLICATION_FACTOR and
// KAFKA_EXTRA_CONFIG.
func FromEnv(getenv func(string) string) (Settings, error) {
	s := Settings{
		BootstrapServers:  or(getenv("KAFKA_BOOTSTRAP_SERVERS"), DefaultBootstrapServers),
		Topic:             or(getenv("KAFKA_TOPIC"), DefaultTopic),
		GroupID:           or(getenv("KAFKA_GROUP_ID"), DefaultGroupID),
		Partitions:        DefaultPartitions,
		ReplicationFactor: -1,
		Extra:             kafka.ConfigMap{},
	}
	s.DLQTopic = or(getenv("KAFKA_DLQ_TOPIC"), s.Topic+".dlq")
	var err error
	if s.Partitions, err = intFromEnv(getenv, "KAFKA_PARTITIONS", DefaultPartitions, 1); err != nil {
		return Settings{}, err
	}
	if s.ReplicationFactor, err = intFromEnv(getenv, "KAFKA_REPLICATION_FACTOR", -1, -1); err != nil {
		return Settings{}, err
	}
	if v := strings.TrimSpace(getenv("KAFKA_EXTRA_CONFIG")); v != "" {
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || k == "" {
				return Settings{}, fmt.Errorf("KAFKA_EXTRA_CONFIG: %q is not key=value", kv)
			}
			s.Extra[k] = val
		}
	}
	return s, nil
}

func or(v, def string) string {
	if v = strings.TrimSpace(v); v != "" {
		return v
	}
	return def
}

func intFromEnv(getenv func(string) string, name string, def, min int) (int, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n == 0 {
		return 0, fmt.Errorf("%s: %q is not a valid count", name, v)
	}
	return n, nil
}

func (s Settings) with(m kafka.ConfigMap) *kafka.ConfigMap {
	out := kafka.ConfigMap{
		"bootstrap.servers": s.BootstrapServers,
		// Asking about a topic (readiness, a produce, a lag question) must
		// never create it: a broker with auto.create.topics.enable would,
		// with its default partition count (1 on a stock broker), and
		// librdkafka's producers (and admin clients) allow it by default.
		// Topics are created by EnsureTopics, with their partition count.
		"allow.auto.create.topics": false,
		// librdkafka backs off reconnecting up to 10 s by default: after a
		// broker restart the web server kept answering 503 for up to 10 s
		// more (docs/RELIABILITY.md). One attempt per 2 s per broker
		// while it is away costs nothing.
		"reconnect.backoff.max.ms": 2000,
	}
	for k, v := range m {
		out[k] = v
	}
	for k, v := range s.Extra {
		out[k] = v
	}
	return &out
}

// withLogs is with, for a producer or consumer: its librdkafka log lines
// go to s.Logs when set.
func (s Settings) withLogs(m kafka.ConfigMap) *kafka.ConfigMap {
	out := s.with(m)
	if s.Logs != nil {
		(*out)["go.logs.channel.enable"] = true
		(*out)["go.logs.channel"] = s.Logs
	}
	return out
}

// ProducerConfig is a durable producer: idempotent (no duplicates or
// reordering on retries), acks from all in-sync replicas, and librdkafka
// giving up on a message after timeout, so a caller waiting for the
// delivery report is never left guessing longer than that.
func (s Settings) ProducerConfig(timeout time.Duration) *kafka.ConfigMap {
	return s.withLogs(kafka.ConfigMap{
		"enable.idempotence": true,
		"acks":               "all",
		"message.timeout.ms": int(timeout.Milliseconds()),
		// A short linger batches concurrent requests into one produce
		// request without adding noticeable latency.
		"linger.ms":                          2,
		"go.delivery.report.fields":          "key,value,headers",
		"socket.connection.setup.timeout.ms": int(max(timeout, time.Second).Milliseconds()),
	})
}

// ConsumerConfig is a consumer that never commits on its own: offsets are
// committed by the caller after the messages are stored.
func (s Settings) ConsumerConfig() *kafka.ConfigMap {
	m := kafka.ConfigMap{
		"group.id":                 s.GroupID,
		"enable.auto.commit":       false,
		"enable.auto.offset.store": false,
		"auto.offset.reset":        "earliest",
		// Only committed transactional data, and no commit markers.
		"isolation.level": "read_committed",
	}
	// A consumer that crashes (kill -9, OOM) holds its partitions until
	// the group coordinator misses its heartbeats for session.timeout.ms:
	// librdkafka's 45 s default is 45 s of a growing backlog the HPA scales
	// on. Heartbeats come from librdkafka's own thread, not the poll loop,
	// so a slow batch does not miss them; 10 s (the broker's minimum is 6 s)
	// cut recovery after a crash to ~15 s here (docs/RELIABILITY.md). Under
	// group.protocol=consumer (KIP-848) both are the broker's settings and
	// a client may not set them.
	if p, _ := s.Extra.Get("group.protocol", "classic"); p != "consumer" {
		m["session.timeout.ms"] = 10000
		m["heartbeat.interval.ms"] = 3000
	}
	return s.withLogs(m)
}

// AdminConfig is the configuration of an admin client.
func (s Settings) AdminConfig() *kafka.ConfigMap { return s.with(nil) }

// EnsureTopics creates each topic that does not exist yet with
// s.Partitions partitions. A topic that exists with fewer partitions is
// grown to s.Partitions (a short topic caps the consumers that can share
// the work below what the HPA scales to); onGrow, if set, is told, so the
// caller can say so loudly: keys hash to other partitions afterwards.
func EnsureTopics(ctx context.Context, admin *kafka.AdminClient, s Settings, onGrow func(topic string, from, to int), topics ...string) error {
	specs := make([]kafka.TopicSpecification, 0, len(topics))
	for _, t := range topics {
		specs = append(specs, kafka.TopicSpecification{
			Topic:             t,
			NumPartitions:     s.Partitions,
			ReplicationFactor: s.ReplicationFactor,
		})
	}
	res, err := admin.CreateTopics(ctx, specs, kafka.SetAdminOperationTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("creating Kafka topics %v at %s: %w", topics, s.BootstrapServers, err)
	}
	var errs []error
	var existing []string
	for _, r := range res {
		switch code := r.Error.Code(); code {
		case kafka.ErrNoError:
		case kafka.ErrTopicAlreadyExists:
			existing = append(existing, r.Topic)
		default:
			errs = append(errs, fmt.Errorf("creating Kafka topic %q: %w", r.Topic, r.Error))
		}
	}
	for _, t := range existing {
		if err := growTopic(ctx, admin, s, t, onGrow); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func growTopic(ctx context.Context, admin *kafka.AdminClient, s Settings, topic string, onGrow func(string, int, int)) error {
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), 100*time.Millisecond)
	}
	md, err := admin.GetMetadata(&topic, false, int(timeout.Milliseconds()))
	if err != nil {
		return fmt.Errorf("reading Kafka topic %q: %w", topic, err)
	}
	tm, ok := md.Topics[topic]
	if !ok || tm.Error.Code() != kafka.ErrNoError {
		return fmt.Errorf("reading Kafka topic %q: %v", topic, tm.Error)
	}
	have := len(tm.Partitions)
	if have >= s.Partitions {
		return nil
	}
	res, err := admin.CreatePartitions(ctx, []kafka.PartitionsSpecification{{Topic: topic, IncreaseTo: s.Partitions}},
		kafka.SetAdminOperationTimeout(10*time.Second))
	if err == nil && len(res) == 1 && res[0].Error.Code() != kafka.ErrNoError {
		err = res[0].Error
	}
	if err != nil {
		return fmt.Errorf("the Kafka topic %q has %d partitions, KAFKA_PARTITIONS is %d, and growing it failed: %w (grow it with kafka-topics --alter --partitions %d, or set KAFKA_PARTITIONS=%d)",
			topic, have, s.Partitions, err, s.Partitions, have)
	}
	if onGrow != nil {
		onGrow(topic, have, s.Partitions)
	}
	return nil
}

// Ping asks the cluster for topic's metadata, within ctx's deadline (2 s
// without one): the cheapest call that proves the brokers answer and the
// topic exists.
func Ping(ctx context.Context, h interface {
	GetMetadata(*string, bool, int) (*kafka.Metadata, error)
}, topic string) error {
	timeout := 2 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), 10*time.Millisecond)
	}
	md, err := h.GetMetadata(&topic, false, int(timeout.Milliseconds()))
	if err != nil {
		return fmt.Errorf("kafka unreachable: %w", err)
	}
	t, ok := md.Topics[topic]
	if !ok || t.Error.Code() != kafka.ErrNoError {
		return fmt.Errorf("kafka topic %q unavailable: %v", topic, t.Error)
	}
	return nil
}
