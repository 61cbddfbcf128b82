package lag_test

import (
	"context"
	"testing"
	"time"

	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
)

// BenchmarkGroupLag100Partitions times one lag computation for a group
// over a topic of 100 partitions: metadata, committed offsets, end and
// start offsets, and the marker check of partitions with a small lag.
//
//	TEST_KAFKA_BOOTSTRAP=127.0.0.1:19092 go test -run '^$' -bench GroupLag ./internal/lag/
func BenchmarkGroupLag100Partitions(b *testing.B) {
	for _, broker := range []string{"kfake", "apache-kafka"} {
		b.Run(broker, func(b *testing.B) {
			var bootstrap string
			if broker == "kfake" {
				_, bootstrap = testkafka.Fake(b)
			} else {
				bootstrap = testkafka.Real(b)
			}
			topic, group := unique("bench"), unique("group")
			createTopic(b, bootstrap, topic, 100)
			produced := make([]int, 100)
			consumed := make([]int, 100)
			for i := range produced {
				produced[i], consumed[i] = 50, 20+i%30 // lags of 1..30: a third get the marker check
			}
			produce(b, bootstrap, topic, produced, false)
			consume(b, bootstrap, group, topic, consumed)
			s := source(b, bootstrap)
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				parts, err := s.GroupPartitions(ctx, group, []string{topic})
				cancel()
				if err != nil || len(parts) != 100 {
					b.Fatalf("%d partitions, %v", len(parts), err)
				}
				_ = lag.ByTopic(group, lag.Calculate(parts))
			}
		})
	}
}
