package kafkaenv

import (
	"log/slog"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// ErrorLog logs librdkafka's client errors without flooding: while a
// broker is down librdkafka reports the same error on every reconnect
// attempt, many times a second. Each distinct message is logged at most
// once per interval, with how many repeats were suppressed.
type ErrorLog struct {
	Logger   *slog.Logger
	Client   string // which client, for the log line
	Interval time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	hush map[string]int
}

// Log records one client error.
func (l *ErrorLog) Log(e kafka.Error) {
	l.mu.Lock()
	if l.last == nil {
		l.last, l.hush = map[string]time.Time{}, map[string]int{}
	}
	msg := e.Error()
	interval := l.Interval
	if interval == 0 {
		interval = 30 * time.Second
	}
	if t, ok := l.last[msg]; ok && time.Since(t) < interval && !e.IsFatal() {
		l.hush[msg]++
		l.mu.Unlock()
		return
	}
	suppressed := l.hush[msg]
	l.last[msg], l.hush[msg] = time.Now(), 0
	l.mu.Unlock()
	l.Logger.Warn("kafka "+l.Client, "err", msg, "code", e.Code().String(), "fatal", e.IsFatal(), "repeats_suppressed", suppressed)
}

// Drain logs the client errors among events until the channel closes;
// other events are dropped (callers take delivery reports per message).
func (l *ErrorLog) Drain(events <-chan kafka.Event) {
	for ev := range events {
		if e, ok := ev.(kafka.Error); ok {
			l.Log(e)
		}
	}
}
