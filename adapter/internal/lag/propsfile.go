package lag

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"os"
	"sort"
	"time"
)

// FollowPropertiesFile re-reads the properties file at path every period
// (a mounted Secret changes by the kubelet swapping a symlink, which only
// reading again sees) and, when the SASL user or password changed, makes
// the next connections authenticate with the new ones: a rotated password
// takes effect without a restart. A change of any other property is
// logged: it takes a restart. It returns when ctx ends.
func (s *Source) FollowPropertiesFile(ctx context.Context, path string, base map[string]string, period time.Duration, logger *slog.Logger) {
	last, _ := os.ReadFile(path)
	current, _ := ReadPropertiesFile(path)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		b, err := os.ReadFile(path)
		if err != nil || bytes.Equal(b, last) {
			if err != nil {
				logger.Warn("reading the Kafka properties file", "path", path, "err", err)
			}
			continue
		}
		last = b
		next, err := ReadPropertiesFile(path)
		if err != nil {
			logger.Error("the Kafka properties file changed and does not parse: kept the settings in use", "path", path, "err", err)
			continue
		}
		old, now := Merge(base, current), Merge(base, next)
		if old["sasl.username"] != now["sasl.username"] || old["sasl.password"] != now["sasl.password"] {
			s.SetCredentials(now["sasl.username"], now["sasl.password"])
			logger.Info("the Kafka SASL credentials changed: new connections use them", "path", path, "user", now["sasl.username"])
		}
		var other []string
		for k := range maps.Keys(Merge(old, now)) {
			if k != "sasl.username" && k != "sasl.password" && old[k] != now[k] {
				other = append(other, k)
			}
		}
		if len(other) > 0 {
			sort.Strings(other)
			logger.Warn("Kafka properties changed that take a restart of the adapter to apply", "path", path, "properties", other)
		}
		current = next
	}
}
