// Package ingest moves purchases from Kafka into the store: at-least-once
// consumption, idempotent batched writes, offsets committed only after the
// write, and undecodable messages parked in a dead-letter topic instead of
// being dropped or blocking their partition.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/purchase-system/purchase-system/consumer/internal/store"
	"github.com/purchase-system/purchase-system/servicekit/kafkaenv"
	"github.com/purchase-system/purchase-system/servicekit/purchase"
	"github.com/purchase-system/purchase-system/servicekit/retry"
)

// Store is where purchases go; Insert must be idempotent by purchase id.
type Store interface {
	Insert(ctx context.Context, recs []store.Record) (int, error)
}

// Headers set on a dead-lettered message.
const (
	HeaderError     = "error"
	HeaderTopic     = "source-topic"
	HeaderPartition = "source-partition"
	HeaderOffset    = "source-offset"
)

// Options tune batching.
type Options struct {
	// BatchSize is the most messages written in one store transaction.
	BatchSize int
	// BatchWait is how long a batch may wait to fill once it has its first
	// message.
	BatchWait time.Duration
}

// storeBackoff paces retries while the database or the dead-letter topic
// is away; the partition waits rather than skipping a message.
var storeBackoff = retry.Backoff{First: 100 * time.Millisecond, Max: 5 * time.Second}

// RevokeFlushTimeout bounds the attempt to store what was read from
// partitions being revoked: the group's rebalance waits for it.
var RevokeFlushTimeout = 5 * time.Second

// StoreAttemptTimeout bounds one attempt of the main loop to store a
// batch. While the database is away the loop does not retry without end:
// it pauses its partitions and keeps polling, so heartbeats, rebalances
// (a scale-out that the lag of the outage triggers) and the revoke
// callback go on, and it tries again after a back-off.
var StoreAttemptTimeout = 5 * time.Second

// DefaultOptions favour throughput while keeping the added latency small.
var DefaultOptions = Options{BatchSize: 1000, BatchWait: 20 * time.Millisecond}

// Ingestor is one group member consuming the purchase topic.
type Ingestor struct {
	consumer *kafka.Consumer
	dlq      *kafka.Producer
	store    Store
	settings kafkaenv.Settings
	opts     Options
	metrics  *Metrics
	logger   *slog.Logger

	errors   *kafkaenv.ErrorLog
	pending  []*kafka.Message
	received map[*kafka.Message]time.Time
}

// New creates the consumer and the dead-letter producer. Nothing is read
// until Run.
func New(s kafkaenv.Settings, st Store, m *Metrics, opts Options, logger *slog.Logger) (*Ingestor, error) {
	c, err := kafka.NewConsumer(s.ConsumerConfig())
	if err != nil {
		return nil, fmt.Errorf("creating Kafka consumer for %s: %w", s.BootstrapServers, err)
	}
	p, err := kafka.NewProducer(s.ProducerConfig(10 * time.Second))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("creating dead-letter producer: %w", err)
	}
	go (&kafkaenv.ErrorLog{Logger: logger, Client: "dead-letter producer"}).Drain(p.Events())
	return &Ingestor{
		consumer: c, dlq: p, store: st, settings: s, opts: opts, metrics: m, logger: logger,
		received: map[*kafka.Message]time.Time{},
		errors:   &kafkaenv.ErrorLog{Logger: logger, Client: "consumer"},
	}, nil
}

// EnsureTopics creates the purchase and dead-letter topics if missing.
func (in *Ingestor) EnsureTopics(ctx context.Context) error {
	admin, err := kafka.NewAdminClientFromConsumer(in.consumer)
	if err != nil {
		return err
	}
	defer admin.Close()
	return kafkaenv.EnsureTopics(ctx, admin, in.settings, func(topic string, from, to int) {
		in.logger.Warn("Kafka topic had fewer partitions than KAFKA_PARTITIONS: grown; keys hash to other partitions from now on",
			"topic", topic, "from", from, "to", to)
	}, in.settings.Topic, in.settings.DLQTopic)
}

// Ready reports whether Kafka answers.
func (in *Ingestor) Ready(ctx context.Context) error {
	return kafkaenv.Ping(ctx, in.consumer, in.settings.Topic)
}

// Run consumes until ctx ends, then stores and commits what it holds and
// leaves the group. It returns ctx's end as nil.
func (in *Ingestor) Run(ctx context.Context) error {
	err := in.consumer.Subscribe(in.settings.Topic, func(_ *kafka.Consumer, ev kafka.Event) error {
		switch e := ev.(type) {
		case kafka.RevokedPartitions:
			// Finish what was read before another member takes these
			// partitions, so it does not redo the work.
			in.logger.Info("partitions revoked", "partitions", partitionList(e.Partitions))
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RevokeFlushTimeout)
			defer cancel()
			if !in.flush(fctx) {
				// Not stored, so not committed: the revoked partitions'
				// next owner reads them again from the committed offset.
				// Only theirs are let go. Under cooperative rebalancing
				// (cooperative-sticky, or the consumer protocol of KIP-848)
				// this member keeps its other partitions and reads on past
				// their pending messages: dropping those would lose them.
				dropped := in.dropPendingOf(e.Partitions)
				in.logger.Warn("storing before giving partitions up failed; their messages are left to the next owner",
					"partitions", partitionList(e.Partitions), "dropped", dropped, "kept_pending", len(in.pending))
			}
			// A partition paused while the store was away stays paused
			// in librdkafka across a revoke and a new assignment: it would
			// never be fetched again. The main loop pauses what it is
			// given next, as long as the store stays away.
			if err := in.consumer.Resume(e.Partitions); err != nil {
				in.logger.Warn("resuming revoked partitions", "err", err)
			}
		case kafka.AssignedPartitions:
			in.logger.Info("partitions assigned", "partitions", partitionList(e.Partitions))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("subscribing to %q: %w", in.settings.Topic, err)
	}
	in.logger.Info("consuming", "topic", in.settings.Topic, "group", in.settings.GroupID)

	var batchStart time.Time
	// stalled: the last store attempt failed; the assigned partitions are
	// paused until one succeeds.
	stalled, nextTry, backoff := false, time.Time{}, storeBackoff.First
	for ctx.Err() == nil {
		wait := 100 * time.Millisecond
		switch {
		case stalled:
			wait = min(max(time.Until(nextTry), time.Millisecond), 100*time.Millisecond)
		case len(in.pending) > 0:
			wait = max(time.Until(batchStart.Add(in.opts.BatchWait)), time.Millisecond)
		}
		switch e := in.consumer.Poll(int(wait.Milliseconds())).(type) {
		case *kafka.Message:
			if err := e.TopicPartition.Error; err != nil {
				// A partition's fetch failed (the message carries no
				// data): nothing is skipped — the position stays where
				// it was and librdkafka fetches again — but it is
				// counted and logged (rate-limited), not lost in debug.
				code := "unknown"
				var kerr kafka.Error
				if errors.As(err, &kerr) {
					code = kerr.Code().String()
					in.errors.Log(kerr)
				} else {
					in.logger.Warn("kafka fetch error", "partition", e.TopicPartition.Partition, "err", err)
				}
				in.metrics.fetchErrors.WithLabelValues(code).Inc()
				break
			}
			if len(in.pending) == 0 {
				batchStart = time.Now()
			}
			in.pending = append(in.pending, e)
			in.received[e] = time.Now()
		case kafka.Error:
			in.errors.Log(e)
			if e.IsFatal() {
				return fmt.Errorf("kafka consumer: %w", e)
			}
		}
		if stalled {
			// Partitions assigned meanwhile are paused too.
			in.pause()
			if time.Now().Before(nextTry) {
				continue
			}
		} else if len(in.pending) < in.opts.BatchSize && (len(in.pending) == 0 || time.Since(batchStart) < in.opts.BatchWait) {
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, StoreAttemptTimeout)
		ok := in.flush(fctx)
		cancel()
		switch {
		case ok && stalled:
			stalled, backoff = false, storeBackoff.First
			in.resume()
			in.logger.Info("stored again; partitions resumed")
		case !ok && ctx.Err() == nil:
			if !stalled {
				in.logger.Warn("storing failed; partitions paused, polling on (rebalances and heartbeats continue) until the store takes the batch",
					"pending", len(in.pending))
			}
			stalled, nextTry = true, time.Now().Add(backoff)
			backoff = min(2*backoff, storeBackoff.Max)
			in.pause()
		}
	}
	// Shutting down: the batch in hand is stored and committed, then the
	// group is told we are leaving so it rebalances at once.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if !in.flush(fctx) {
		in.logger.Warn("stopping with unstored messages; they stay uncommitted and will be read again", "count", len(in.pending))
	}
	if err := in.consumer.Close(); err != nil {
		in.logger.Warn("closing Kafka consumer", "err", err)
	}
	in.dlq.Flush(5000)
	in.dlq.Close()
	return nil
}

// pause stops fetching for every assigned partition (what is in hand stays
// pending); resume undoes it.
func (in *Ingestor) pause() {
	if parts, err := in.consumer.Assignment(); err == nil && len(parts) > 0 {
		if err := in.consumer.Pause(parts); err != nil {
			in.logger.Warn("pausing partitions", "err", err)
		}
	}
}

func (in *Ingestor) resume() {
	if parts, err := in.consumer.Assignment(); err == nil && len(parts) > 0 {
		if err := in.consumer.Resume(parts); err != nil {
			in.logger.Warn("resuming partitions", "err", err)
		}
	}
}

// flush stores the pending messages, dead-letters the bad ones and commits
// their offsets. It retries the store until it succeeds or ctx ends; only
// then are offsets committed, so a failure never skips a message. It
// reports whether the pending messages were handled.
func (in *Ingestor) flush(ctx context.Context) bool {
	if len(in.pending) == 0 {
		return true
	}
	msgs := in.pending
	var recs []store.Record
	var bad []*kafka.Message
	var badErrs []error
	for _, m := range msgs {
		p, err := purchase.Decode(m.Value)
		if err != nil {
			bad = append(bad, m)
			badErrs = append(badErrs, err)
			continue
		}
		recs = append(recs, store.Record{Purchase: p, Partition: m.TopicPartition.Partition, Offset: int64(m.TopicPartition.Offset)})
	}

	start := time.Now()
	var inserted int
	err := retry.Do(ctx, storeBackoff, in.logger, "storing purchases", func() (err error) {
		inserted, err = in.store.Insert(ctx, recs)
		return err
	})
	if err != nil {
		return false // stopping with the database away: nothing is committed
	}
	in.metrics.storeSeconds.Observe(time.Since(start).Seconds())
	in.metrics.stored.Add(float64(inserted))
	in.metrics.duplicates.Add(float64(len(recs) - inserted))

	for i, m := range bad {
		if err := retry.Do(ctx, storeBackoff, in.logger, "dead-lettering", func() error { return in.deadLetter(m, badErrs[i]) }); err != nil {
			return false
		}
		in.logger.Warn("message dead-lettered", "partition", m.TopicPartition.Partition,
			"offset", int64(m.TopicPartition.Offset), "err", badErrs[i].Error(), "dlq", in.settings.DLQTopic)
	}

	if err := in.commit(msgs); err != nil {
		// The rows are stored; a redelivery after this is absorbed by the
		// idempotent insert.
		in.logger.Warn("committing offsets failed; messages may be redelivered", "err", err)
	}
	now := time.Now()
	for _, m := range msgs {
		in.metrics.processingSeconds.Observe(now.Sub(in.received[m]).Seconds())
		delete(in.received, m)
	}
	in.metrics.processed.WithLabelValues("success").Add(float64(len(recs)))
	in.metrics.processed.WithLabelValues("error").Add(float64(len(bad)))
	in.pending = in.pending[:0]
	return true
}

// dropPendingOf lets go of the pending messages of the given partitions and
// returns how many there were.
func (in *Ingestor) dropPendingOf(tps []kafka.TopicPartition) int {
	gone := map[int32]bool{}
	for _, tp := range tps {
		if tp.Topic != nil && *tp.Topic == in.settings.Topic {
			gone[tp.Partition] = true
		}
	}
	kept := in.pending[:0]
	dropped := 0
	for _, m := range in.pending {
		if gone[m.TopicPartition.Partition] {
			delete(in.received, m)
			dropped++
			continue
		}
		kept = append(kept, m)
	}
	in.pending = kept
	return dropped
}

func (in *Ingestor) deadLetter(m *kafka.Message, cause error) error {
	delivered := make(chan kafka.Event, 1)
	err := in.dlq.Produce(&kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &in.settings.DLQTopic, Partition: kafka.PartitionAny},
		Key:            m.Key,
		Value:          m.Value,
		Headers: append(m.Headers,
			kafka.Header{Key: HeaderError, Value: []byte(cause.Error())},
			kafka.Header{Key: HeaderTopic, Value: []byte(*m.TopicPartition.Topic)},
			kafka.Header{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(m.TopicPartition.Partition)))},
			kafka.Header{Key: HeaderOffset, Value: []byte(strconv.FormatInt(int64(m.TopicPartition.Offset), 10))},
		),
	}, delivered)
	if err != nil {
		return err
	}
	ev := <-delivered
	if dm, ok := ev.(*kafka.Message); ok && dm.TopicPartition.Error != nil {
		return dm.TopicPartition.Error
	}
	return nil
}

// commit commits, per partition, the offset after the last message handled.
func (in *Ingestor) commit(msgs []*kafka.Message) error {
	type key struct {
		topic     string
		partition int32
	}
	next := map[key]kafka.Offset{}
	for _, m := range msgs {
		k := key{*m.TopicPartition.Topic, m.TopicPartition.Partition}
		if o := m.TopicPartition.Offset + 1; o > next[k] {
			next[k] = o
		}
	}
	offsets := make([]kafka.TopicPartition, 0, len(next))
	for k, o := range next {
		topic := k.topic
		offsets = append(offsets, kafka.TopicPartition{Topic: &topic, Partition: k.partition, Offset: o})
	}
	res, err := in.consumer.CommitOffsets(offsets)
	if err != nil {
		return err
	}
	var errs []error
	for _, tp := range res {
		if tp.Error != nil {
			errs = append(errs, fmt.Errorf("partition %d: %w", tp.Partition, tp.Error))
		}
	}
	return errors.Join(errs...)
}

func partitionList(tps []kafka.TopicPartition) []int32 {
	out := make([]int32, 0, len(tps))
	for _, tp := range tps {
		out = append(out, tp.Partition)
	}
	return out
}
