// Package retry repeats an operation against a dependency that may be
// away (Kafka, the database) with capped exponential back-off, logging
// each failure so an outage is visible rather than silent.
package retry

import (
	"context"
	"log/slog"
	"time"
)

// Backoff is the wait before the first retry and its cap.
type Backoff struct {
	First, Max time.Duration
}

// Do runs f until it returns nil or ctx ends; it returns ctx's error then.
func Do(ctx context.Context, b Backoff, logger *slog.Logger, what string, f func() error) error {
	for wait := b.First; ; wait = min(2*wait, b.Max) {
		err := f()
		if err == nil {
			return nil
		}
		logger.Warn(what+" failed; retrying", "err", err, "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}
