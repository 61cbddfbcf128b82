package lag_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/purchase-system/purchase-system/adapter/internal/backend"
	"github.com/purchase-system/purchase-system/adapter/internal/lag"
	"github.com/purchase-system/purchase-system/adapter/internal/store"
	"github.com/purchase-system/purchase-system/testkit/testkafka"
)

// BenchmarkLagAtScale serves the lag of 10, 300 and 3,000 consumer groups
// on 1,000 topics of 10 partitions (10,000 partitions, one broker) the way
// the adapter does — the store refreshing every wanted query, each group
// asked for by its HPA every 15 s — and reports what it costs: connections
// to the broker, memory, CPU, Kafka requests per second, the age of the
// lag each HPA read, and how long its read took.
//
//	make bench-lag   (starts the broker; or, with one running:)
//	TEST_KAFKA_BOOTSTRAP=127.0.0.1:29092 go test -run '^$' -bench LagAtScale -benchtime 1x -timeout 30m ./internal/lag/
//
// LAG_SCALE_GROUPS (e.g. "3000") and LAG_SCALE_SECONDS (per size, default
// 60) narrow a run. The topics and commits are made once and reused.
func BenchmarkLagAtScale(b *testing.B) {
	bootstrap := testkafka.Real(b)
	const topics, partitions, perPartition = 1000, 10, 20
	sizes := []int{10, 300, 3000}
	if v := os.Getenv("LAG_SCALE_GROUPS"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, _ := strconv.Atoi(f)
			sizes = append(sizes, n)
		}
	}
	seconds := 60
	if v := os.Getenv("LAG_SCALE_SECONDS"); v != "" {
		seconds, _ = strconv.Atoi(v)
	}
	maxGroups := 0
	for _, n := range sizes {
		maxGroups = max(maxGroups, n)
	}
	scaleFixture(b, bootstrap, topics, partitions, perPartition, maxGroups)
	_, portStr, _ := strings.Cut(bootstrap, ":")
	port, _ := strconv.Atoi(portStr)

	for _, groups := range sizes {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			for range b.N {
				r := runAtScale(b, bootstrap, port, groups, time.Duration(seconds)*time.Second)
				b.ReportMetric(float64(r.connections), "connections")
				b.ReportMetric(r.heapMiB, "heap-MiB")
				b.ReportMetric(r.rssMiB, "rss-MiB")
				b.ReportMetric(r.cpuPerSec, "cpu-s/s")
				b.ReportMetric(r.kafkaReqPerSec, "kafka-req/s")
				b.ReportMetric(r.ageMax.Seconds(), "age-max-s")
				b.ReportMetric(r.ageP99.Seconds(), "age-p99-s")
				b.ReportMetric(float64(r.readP50.Microseconds())/1000, "read-p50-ms")
				b.ReportMetric(float64(r.readP99.Microseconds())/1000, "read-p99-ms")
				b.ReportMetric(r.groupsPerRound, "groups/round")
				b.Logf("%d groups: %d reads, %d wrong, %d errors; connections %d; heap %.0f MiB, rss %.0f MiB; cpu %.3f s/s; kafka %.1f req/s; age max %s p99 %s; read p50 %s p99 %s; %.0f groups per round",
					groups, r.reads, r.wrong, r.errors, r.connections, r.heapMiB, r.rssMiB, r.cpuPerSec, r.kafkaReqPerSec, r.ageMax, r.ageP99, r.readP50, r.readP99, r.groupsPerRound)
				if r.wrong > 0 || r.errors > 0 {
					b.Fatalf("%d reads wrong, %d errors", r.wrong, r.errors)
				}
			}
		})
	}
}

func scaleTopic(i int) string { return fmt.Sprintf("scale-%04d", i) }
func scaleGroup(i int) string { return fmt.Sprintf("scale-group-%04d", i) }

// scaleFixture makes the topics (perPartition records in every partition)
// and the groups' commits: group i reads topic i%topics and committed
// offset i%perPartition in each partition.
func scaleFixture(b *testing.B, bootstrap string, topics, partitions, perPartition, groups int) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(bootstrap), kgo.ProducerLinger(5*time.Millisecond), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	existing, err := adm.ListTopics(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var missing []string
	for i := range topics {
		if !existing.Has(scaleTopic(i)) {
			missing = append(missing, scaleTopic(i))
		}
	}
	t0 := time.Now()
	for len(missing) > 0 {
		n := min(len(missing), 100)
		res, err := adm.CreateTopics(ctx, int32(partitions), 1, nil, missing[:n]...)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
				b.Fatalf("create %s: %v", r.Topic, r.Err)
			}
		}
		missing = missing[n:]
	}
	// New topics take a moment to have leaders everywhere.
	var end kadm.ListedOffsets
	for deadline := time.Now().Add(3 * time.Minute); ; {
		end, err = adm.ListEndOffsets(ctx)
		ready := err == nil
		for i := range topics {
			for p := range partitions {
				o, ok := end.Lookup(scaleTopic(i), int32(p))
				ready = ready && ok && o.Err == nil
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("topics not ready after 3 minutes: %v", err)
		}
		time.Sleep(time.Second)
	}
	var wg sync.WaitGroup
	var produceErr error
	var mu sync.Mutex
	for i := range topics {
		for p := range partitions {
			o, _ := end.Lookup(scaleTopic(i), int32(p))
			for k := o.Offset; k < int64(perPartition); k++ {
				wg.Add(1)
				cl.Produce(ctx, &kgo.Record{Topic: scaleTopic(i), Partition: int32(p), Value: []byte("x")}, func(_ *kgo.Record, err error) {
					if err != nil {
						mu.Lock()
						produceErr = err
						mu.Unlock()
					}
					wg.Done()
				})
			}
		}
	}
	wg.Wait()
	if produceErr != nil {
		b.Fatal(produceErr)
	}
	for i := range groups {
		var o kadm.Offsets
		for p := range partitions {
			o.AddOffset(scaleTopic(i%topics), int32(p), int64(i%perPartition), -1)
		}
		if _, err := adm.CommitOffsets(ctx, scaleGroup(i), o); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("fixture: %d topics x %d partitions, %d groups, in %s", topics, partitions, groups, time.Since(t0).Round(time.Second))
}

type scaleResult struct {
	reads, wrong, errors int
	connections          int
	heapMiB, rssMiB      float64
	cpuPerSec            float64
	kafkaReqPerSec       float64
	ageMax, ageP99       time.Duration
	readP50, readP99     time.Duration
	groupsPerRound       float64
}

// runAtScale asks for each group's lag every 15 s (the HPA's period, the
// groups spread over it) for d, through a store over the lag source.
func runAtScale(b *testing.B, bootstrap string, port, groups int, d time.Duration) scaleResult {
	runtime.GC()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	before := connections(port)
	reg := prometheus.NewRegistry()
	src, err := lag.NewSource(map[string]string{"bootstrap.servers": bootstrap}, backend.NewMetrics(reg), lag.NewMetrics(reg))
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	st := store.New(store.FetcherFunc(func(ctx context.Context, q store.Query) ([]store.Sample, error) {
		return src.Fetch(ctx, q.(lag.Query))
	}), store.Options{Fresh: 5 * time.Second, MaxQueries: 10000, MaxPerNamespace: 10000})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go st.Run(ctx)

	cpu0 := cpuSeconds(b)
	start := time.Now()
	var mu sync.Mutex
	var res scaleResult
	var ages, reads []time.Duration
	var wg sync.WaitGroup
	const period = 15 * time.Second
	for i := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := lag.Query{Groups: []string{scaleGroup(i)}, Topics: []string{scaleTopic(i % 1000)}}
			want := float64(10 * (20 - i%20))
			next := start.Add(period * time.Duration(i) / time.Duration(groups))
			for next.Before(start.Add(d)) {
				time.Sleep(time.Until(next))
				t0 := time.Now()
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				v, err := st.Get(rctx, q)
				rcancel()
				took := time.Since(t0)
				mu.Lock()
				res.reads++
				reads = append(reads, took)
				switch {
				case err != nil || v.Err != nil:
					res.errors++
					if res.errors <= 3 {
						b.Logf("group %d: %v %v", i, err, v.Err)
					}
				case len(v.Samples) == 0 || v.Samples[0].Value != want:
					res.wrong++
				default:
					ages = append(ages, time.Since(v.Samples[0].Timestamp))
				}
				mu.Unlock()
				next = next.Add(period)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	res.cpuPerSec = (cpuSeconds(b) - cpu0) / elapsed.Seconds()
	res.connections = connections(port) - before
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.heapMiB = float64(ms.HeapInuse) / (1 << 20)
	res.rssMiB = rssMiB(b)
	res.ageMax, res.ageP99 = quantile(ages, 1), quantile(ages, 0.99)
	res.readP50, res.readP99 = quantile(reads, 0.5), quantile(reads, 0.99)
	mf, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var requests, rounds, roundGroups float64
	for _, f := range mf {
		switch f.GetName() {
		case "adapter_backend_query_duration_seconds":
			for _, m := range f.GetMetric() {
				requests += float64(m.GetHistogram().GetSampleCount())
			}
		case "adapter_kafka_lag_round_groups":
			h := f.GetMetric()[0].GetHistogram()
			rounds, roundGroups = float64(h.GetSampleCount()), h.GetSampleSum()
		}
	}
	res.kafkaReqPerSec = requests / elapsed.Seconds()
	if rounds > 0 {
		res.groupsPerRound = roundGroups / rounds
	}
	return res
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// cpuSeconds is the process's user and system CPU time.
func cpuSeconds(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw)[strings.LastIndexByte(string(raw), ')')+2:])
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

func rssMiB(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
