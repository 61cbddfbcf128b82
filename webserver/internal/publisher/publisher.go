// Package publisher puts accepted purchases into Kafka and says so only
// once Kafka acknowledged them.
package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/purchase-system/purchase-system/servicekit/kafkaenv"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
)

// ErrUnavailable means Kafka did not take the purchase: the caller must not
// report it as accepted.
var ErrUnavailable = errors.New("kafka unavailable")

// Publisher produces purchases to one topic, keyed by user id so a user's
// purchases stay in order on one partition.
type Publisher struct {
	producer *kafka.Producer
	settings kafkaenv.Settings
	timeout  time.Duration
	logger   *slog.Logger
	done     chan struct{}
}

// New connects a durable producer. timeout bounds how long a purchase may
// wait for Kafka's acknowledgement.
func New(s kafkaenv.Settings, timeout time.Duration, logger *slog.Logger) (*Publisher, error) {
	p, err := kafka.NewProducer(s.ProducerConfig(timeout))
	if err != nil {
		return nil, fmt.Errorf("creating Kafka producer for %s: %w", s.BootstrapServers, err)
	}
	pub := &Publisher{producer: p, settings: s, timeout: timeout, logger: logger, done: make(chan struct{})}
	go pub.logEvents()
	return pub, nil
}

// logEvents drains client-level events (errors such as "all brokers down");
// delivery reports go to per-message channels instead.
func (p *Publisher) logEvents() {
	defer close(p.done)
	(&kafkaenv.ErrorLog{Logger: p.logger, Client: "producer"}).Drain(p.producer.Events())
}

// EnsureTopics creates the purchase topic if it is missing.
func (p *Publisher) EnsureTopics(ctx context.Context) error {
	admin, err := kafka.NewAdminClientFromProducer(p.producer)
	if err != nil {
		return err
	}
	defer admin.Close()
	return kafkaenv.EnsureTopics(ctx, admin, p.settings, logGrow(p.logger), p.settings.Topic)
}

// logGrow says loudly that a topic was grown: keys hash to other
// partitions from now on.
func logGrow(logger *slog.Logger) func(string, int, int) {
	return func(topic string, from, to int) {
		logger.Warn("Kafka topic had fewer partitions than KAFKA_PARTITIONS: grown; a user's later purchases may go to another partition than earlier ones",
			"topic", topic, "from", from, "to", to)
	}
}

// Publish returns nil only after Kafka acknowledged the purchase with
// acks=all. Any other outcome wraps ErrUnavailable.
func (p *Publisher) Publish(ctx context.Context, pu purchase.Purchase) error {
	value, err := purchase.Encode(pu)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	delivered := make(chan kafka.Event, 1)
	msg := &kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &p.settings.Topic, Partition: kafka.PartitionAny},
		Key:            []byte(pu.UserID),
		Value:          value,
	}
	if err := p.producer.Produce(msg, delivered); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	select {
	case ev := <-delivered:
		m, ok := ev.(*kafka.Message)
		if !ok {
			return fmt.Errorf("%w: unexpected delivery event %v", ErrUnavailable, ev)
		}
		if m.TopicPartition.Error != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, m.TopicPartition.Error)
		}
		return nil
	case <-ctx.Done():
		// librdkafka's message.timeout.ms equals our bound, so the
		// message is failing on its side too.
		return fmt.Errorf("%w: not acknowledged within %s", ErrUnavailable, p.timeout)
	}
}

// Ready reports whether Kafka answers and the topic exists.
func (p *Publisher) Ready(ctx context.Context) error {
	return kafkaenv.Ping(ctx, p.producer, p.settings.Topic)
}

// Close waits for outstanding messages (bounded by the publish timeout) and
// closes the producer.
func (p *Publisher) Close() {
	if left := p.producer.Flush(int(p.timeout.Milliseconds())); left > 0 {
		p.logger.Error("kafka producer closed with undelivered messages", "count", left)
	}
	p.producer.Close()
	<-p.done
}
