package procnode

import (
	"os"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	"k8s.io/utils/ptr"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times; 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// cpuSample is the last CPU reading of a process, to turn the cumulative
// counter into a rate for /stats/summary.
type cpuSample struct {
	at      time.Time
	seconds float64
}

// procUsage reads a process's cumulative CPU seconds and resident memory.
func procUsage(pid int) (cpuSeconds float64, rssBytes uint64, ok bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// Fields after the command name (which may contain spaces), from
	// field 3 on: utime is field 14, stime 15, rss 24 (in pages).
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(f) < 22 {
		return 0, 0, false
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	rss, _ := strconv.ParseUint(f[21], 10, 64)
	return (utime + stime) / clockTicks, rss * uint64(os.Getpagesize()), true
}

// nodeUsage reads the machine's cumulative busy CPU seconds and memory in
// use (total minus available).
func nodeUsage() (cpuSeconds float64, memBytes uint64) {
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, _ := strconv.ParseFloat(v, 64)
			cpuSeconds += n / clockTicks
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var total, avail uint64
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			n, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "MemTotal:":
				total = n * 1024
			case "MemAvailable:":
				avail = n * 1024
			}
		}
		memBytes = total - avail
	}
	return cpuSeconds, memBytes
}

// containerUsage is one container's reading.
type containerUsage struct {
	namespace, pod, container string
	started                   time.Time
	cpuSeconds                float64
	nanoCores                 *uint64
	rss                       uint64
}

// usage reads every running container's CPU and memory.
func (p *Provider) usage() []containerUsage {
	rs := p.runtimes()
	now := time.Now()
	var out []containerUsage
	for _, r := range rs {
		for _, c := range r.containers {
			pid := c.pid()
			if pid == 0 {
				continue
			}
			cpu, rss, ok := procUsage(pid)
			if !ok {
				continue
			}
			u := containerUsage{namespace: r.spec.Namespace, pod: r.spec.Name, container: c.spec.Name, cpuSeconds: cpu, rss: rss}
			c.mu.Lock()
			u.started = c.startedAt
			if !c.cpu.at.IsZero() && now.Sub(c.cpu.at) > 100*time.Millisecond && cpu >= c.cpu.seconds {
				u.nanoCores = ptr.To(uint64((cpu - c.cpu.seconds) / now.Sub(c.cpu.at).Seconds() * 1e9))
			}
			c.cpu = cpuSample{at: now, seconds: cpu}
			c.mu.Unlock()
			out = append(out, u)
		}
	}
	return out
}

func (p *Provider) summary() *statsv1alpha1.Summary {
	now := metav1.Now()
	nodeCPU, nodeMem := nodeUsage()
	s := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{
		NodeName:  p.cfg.NodeName,
		StartTime: metav1.NewTime(p.started),
		CPU:       &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: ptr.To(uint64(nodeCPU * 1e9))},
		Memory:    &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: ptr.To(nodeMem), UsageBytes: ptr.To(nodeMem)},
	}}
	byPod := map[string]*statsv1alpha1.PodStats{}
	var order []string
	for _, u := range p.usage() {
		k := u.namespace + "/" + u.pod
		ps, ok := byPod[k]
		if !ok {
			ps = &statsv1alpha1.PodStats{
				PodRef:    statsv1alpha1.PodReference{Name: u.pod, Namespace: u.namespace},
				StartTime: metav1.NewTime(u.started),
				CPU:       &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: ptr.To(uint64(0))},
				Memory:    &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: ptr.To(uint64(0))},
			}
			byPod[k] = ps
			order = append(order, k)
		}
		cs := statsv1alpha1.ContainerStats{
			Name: u.container, StartTime: metav1.NewTime(u.started),
			CPU:    &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: ptr.To(uint64(u.cpuSeconds * 1e9)), UsageNanoCores: u.nanoCores},
			Memory: &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: ptr.To(u.rss), RSSBytes: ptr.To(u.rss), UsageBytes: ptr.To(u.rss)},
		}
		ps.Containers = append(ps.Containers, cs)
		*ps.CPU.UsageCoreNanoSeconds += *cs.CPU.UsageCoreNanoSeconds
		*ps.Memory.WorkingSetBytes += u.rss
		if u.nanoCores != nil {
			if ps.CPU.UsageNanoCores == nil {
				ps.CPU.UsageNanoCores = ptr.To(uint64(0))
			}
			*ps.CPU.UsageNanoCores += *u.nanoCores
		}
	}
	for _, k := range order {
		s.Pods = append(s.Pods, *byPod[k])
	}
	return s
}

func (p *Provider) resourceMetrics() []*dto.MetricFamily {
	ts := ptr.To(time.Now().UnixMilli())
	label := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, &dto.LabelPair{Name: ptr.To(kv[i]), Value: ptr.To(kv[i+1])})
		}
		return out
	}
	family := func(name, help string, typ dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: ptr.To(name), Help: ptr.To(help), Type: typ.Enum()}
	}
	sample := func(f *dto.MetricFamily, v float64, labels []*dto.LabelPair) {
		m := &dto.Metric{Label: labels, TimestampMs: ts}
		if f.GetType() == dto.MetricType_COUNTER {
			m.Counter = &dto.Counter{Value: ptr.To(v)}
		} else {
			m.Gauge = &dto.Gauge{Value: ptr.To(v)}
		}
		f.Metric = append(f.Metric, m)
	}

	nodeCPU := family("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", dto.MetricType_COUNTER)
	nodeMem := family("node_memory_working_set_bytes", "Current working set of the node in bytes", dto.MetricType_GAUGE)
	cCPU := family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", dto.MetricType_COUNTER)
	cMem := family("container_memory_working_set_bytes", "Current working set of the container in bytes", dto.MetricType_GAUGE)
	cStart := family("container_start_time_seconds", "Start time of the container since unix epoch in seconds", dto.MetricType_GAUGE)
	pCPU := family("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", dto.MetricType_COUNTER)
	pMem := family("pod_memory_working_set_bytes", "Current working set of the pod in bytes", dto.MetricType_GAUGE)
	scrapeErr := family("scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", dto.MetricType_GAUGE)

	cpu, mem := nodeUsage()
	sample(nodeCPU, cpu, nil)
	sample(nodeMem, float64(mem), nil)
	sample(scrapeErr, 0, nil)
	podCPU, podMem := map[[2]string]float64{}, map[[2]string]float64{}
	for _, u := range p.usage() {
		l := label("container", u.container, "namespace", u.namespace, "pod", u.pod)
		sample(cCPU, u.cpuSeconds, l)
		sample(cMem, float64(u.rss), l)
		sample(cStart, float64(u.started.UnixNano())/1e9, l)
		k := [2]string{u.namespace, u.pod}
		podCPU[k] += u.cpuSeconds
		podMem[k] += float64(u.rss)
	}
	for k, v := range podCPU {
		sample(pCPU, v, label("namespace", k[0], "pod", k[1]))
		sample(pMem, podMem[k], label("namespace", k[0], "pod", k[1]))
	}
	return []*dto.MetricFamily{nodeCPU, nodeMem, cCPU, cMem, cStart, pCPU, pMem, scrapeErr}
}
