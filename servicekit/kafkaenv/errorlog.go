package kafkaenv

import (
	"context"
	"log/slog"
	"regexp"
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
	msg := e.Error()
	suppressed, ok := l.allow(msg, e.IsFatal())
	if !ok {
		return
	}
	l.Logger.Warn("kafka "+l.Client, "err", msg, "code", e.Code().String(), "fatal", e.IsFatal(), "repeats_suppressed", suppressed)
}

// digits are what changes between repeats of one librdkafka message
// ("after 0ms", "585 identical error(s) suppressed").
var digits = regexp.MustCompile(`[0-9]+`)

// allow says whether a message is logged now, and how many of its repeats
// were held back since it last was.
func (l *ErrorLog) allow(msg string, always bool) (int, bool) {
	key := digits.ReplaceAllString(msg, "N")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.hush = map[string]time.Time{}, map[string]int{}
	}
	interval := l.Interval
	if interval == 0 {
		interval = 30 * time.Second
	}
	if t, ok := l.last[key]; ok && time.Since(t) < interval && !always {
		l.hush[key]++
		return 0, false
	}
	suppressed := l.hush[key]
	l.last[key], l.hush[key] = time.Now(), 0
	return suppressed, true
}

// LogEvent records one of librdkafka's own log lines (which it would
// otherwise print to stderr as "%3|…|FAIL|…", beside the JSON logs, on
// every reconnect attempt): warnings and errors at Warn, the rest at
// Debug, each distinct line at most once per interval.
func (l *ErrorLog) LogEvent(ev kafka.LogEvent) {
	suppressed, ok := l.allow(ev.Tag+" "+ev.Message, false)
	if !ok {
		return
	}
	level := slog.LevelDebug
	if ev.Level <= 4 { // syslog: 3 error, 4 warning
		level = slog.LevelWarn
	}
	l.Logger.Log(context.Background(), level, "kafka "+l.Client, "librdkafka", ev.Tag, "msg_text", ev.Message, "client", ev.Name,
		"level", ev.Level, "repeats_suppressed", suppressed)
}

// NewLogChannel returns a channel for clients' go.logs.channel, drained
// into logger with rate limiting for as long as the program runs.
func NewLogChannel(logger *slog.Logger, client string) chan kafka.LogEvent {
	ch := make(chan kafka.LogEvent, 1000)
	l := &ErrorLog{Logger: logger, Client: client}
	go func() {
		for ev := range ch {
			l.LogEvent(ev)
		}
	}()
	return ch
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
