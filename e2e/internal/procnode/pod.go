package procnode

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/e2e/internal/podnet"
)

// podRuntime is one pod on the node: its network namespace, volumes and
// containers.
type podRuntime struct {
	node *Provider
	key  string // namespace/name
	spec *corev1.Pod
	dir  string
	ns   string // network namespace
	ip   net.IP

	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	containers []*container
	startTime  metav1.Time
	failure    *podFailure // set when the pod cannot start at all
	terminated bool
	done       chan struct{} // closed when every container stopped after delete
	conds      map[corev1.PodConditionType]corev1.PodCondition
}

// stabilise keeps each condition's lastTransitionTime from the last status
// unless the condition changed, so repeated status reports are identical.
func (r *podRuntime) stabilise(st *corev1.PodStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conds == nil {
		r.conds = map[corev1.PodConditionType]corev1.PodCondition{}
	}
	for i, c := range st.Conditions {
		if old, ok := r.conds[c.Type]; ok && old.Status == c.Status {
			st.Conditions[i].LastTransitionTime = old.LastTransitionTime
		}
		r.conds[c.Type] = st.Conditions[i]
	}
}

type podFailure struct{ reason, message string }

// start prepares the pod and launches its containers. Errors end up in the
// pod's status, never silently.
func (r *podRuntime) start() {
	for i := range r.spec.Spec.Containers {
		spec := r.spec.Spec.Containers[i]
		img, err := r.node.cfg.Images.Resolve(spec.Image)
		c := &container{pod: r, spec: spec, image: img, logPath: filepath.Join(r.dir, "logs", spec.Name+".log")}
		if err != nil {
			c.waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: err.Error()}
		}
		r.containers = append(r.containers, c)
	}
	if len(r.spec.Spec.InitContainers) > 0 {
		r.fail("InitContainersUnsupported", "init containers are not supported by the process node")
		return
	}
	for _, c := range r.containers {
		if c.image.Rootfs == "" {
			r.node.event(r.spec, "Warning", "Failed", c.waiting.Message)
			r.changed()
			return // like an image that cannot be pulled: the pod stays Pending, saying why
		}
	}

	ip, err := r.node.ipam.Allocate()
	if err != nil {
		r.fail("NetworkNotReady", err.Error())
		return
	}
	r.ip = ip
	if err := podnet.SetUpPod(r.ns, ip); err != nil {
		r.fail("NetworkNotReady", err.Error())
		return
	}
	if err := r.node.hosts.write(r); err != nil {
		r.fail("NetworkNotReady", err.Error())
		return
	}
	paths, err := r.node.volumes.sync(r.ctx, r.spec, r.dir, ip.String(), r.node.cfg.HostIP)
	if err != nil {
		r.fail("VolumeMountFailed", err.Error())
		return
	}
	r.mu.Lock()
	r.startTime = metav1.Now()
	r.mu.Unlock()

	resolv, err := r.node.writeResolvConf(r)
	if err != nil {
		r.fail("NetworkNotReady", err.Error())
		return
	}
	files := []podexec.Mount{
		{Source: r.node.hosts.path(r), Target: "/etc/hosts", ReadOnly: true},
		{Source: resolv, Target: "/etc/resolv.conf", ReadOnly: true},
	}
	for _, c := range r.containers {
		env, err := r.node.envSources().containerEnv(r.spec, &c.spec, ip.String(), r.node.cfg.HostIP)
		if err != nil {
			c.setWaiting("CreateContainerConfigError", err.Error())
			r.node.event(r.spec, "Warning", "Failed", err.Error())
			continue
		}
		ms, err := mounts(&c.spec, paths)
		if err != nil {
			c.setWaiting("CreateContainerConfigError", err.Error())
			continue
		}
		env = append(env, "HOSTNAME="+r.spec.Name)
		spec, err := containerSpec(r.spec, &c.spec, c.image, env, ms, c.dir(), files)
		if err != nil {
			c.setWaiting("CreateContainerConfigError", err.Error())
			r.node.event(r.spec, "Warning", "Failed", "Error: "+err.Error())
			continue
		}
		go c.run(r.ctx, spec)
		for kind, p := range map[probeKind]*corev1.Probe{readiness: c.spec.ReadinessProbe, liveness: c.spec.LivenessProbe, startup: c.spec.StartupProbe} {
			if p != nil {
				go c.probeLoop(r.ctx, kind, p)
			}
		}
	}
	go r.resync()
	r.changed()
}

// resync refreshes volumes (ConfigMap edits, token rotation) like the
// kubelet's periodic sync.
func (r *podRuntime) resync() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			pod := r.node.latest(r)
			if _, err := r.node.volumes.sync(r.ctx, pod, r.dir, r.ip.String(), r.node.cfg.HostIP); err != nil && r.ctx.Err() == nil {
				r.node.logger.Warn("refreshing volumes", "pod", r.key, "err", err)
			}
		}
	}
}

func (r *podRuntime) fail(reason, msg string) {
	r.mu.Lock()
	r.failure = &podFailure{reason, msg}
	r.mu.Unlock()
	r.node.logger.Error("pod failed to start", "pod", r.key, "reason", reason, "err", msg)
	r.node.event(r.spec, "Warning", reason, msg)
	r.changed()
}

// grace is the pod's termination grace period.
func (r *podRuntime) grace() time.Duration {
	if s := r.spec.DeletionGracePeriodSeconds; s != nil {
		return time.Duration(*s) * time.Second
	}
	if s := r.spec.Spec.TerminationGracePeriodSeconds; s != nil {
		return time.Duration(*s) * time.Second
	}
	return 30 * time.Second
}

// terminate stops every container (SIGTERM, then SIGKILL after the grace
// period), tears the network down and reports the terminal status.
func (r *podRuntime) terminate(grace time.Duration) {
	r.mu.Lock()
	if r.terminated {
		r.mu.Unlock()
		return
	}
	r.terminated = true
	r.mu.Unlock()
	go func() {
		var wg sync.WaitGroup
		for _, c := range r.containers {
			wg.Add(1)
			go func() { defer wg.Done(); c.stop(grace) }()
		}
		wg.Wait()
		r.cancel()
		r.node.hosts.forget(r)
		_ = podnet.DeletePod(r.ns)
		if r.ip != nil {
			r.node.ipam.Release(r.ip)
		}
		r.node.volumes.forget(string(r.spec.UID))
		_ = os.RemoveAll(r.dir)
		close(r.done)
		r.changed()
		r.node.forget(r)
	}()
}

// changed tells virtual-kubelet the pod's status moved.
func (r *podRuntime) changed() {
	r.node.notifyStatus(r)
}

// status computes the pod's status from its containers.
func (r *podRuntime) status() corev1.PodStatus {
	r.mu.Lock()
	failure, start, terminated := r.failure, r.startTime, r.terminated
	r.mu.Unlock()
	st := corev1.PodStatus{
		HostIP:    r.node.cfg.HostIP,
		HostIPs:   []corev1.HostIP{{IP: r.node.cfg.HostIP}},
		QOSClass:  r.spec.Status.QOSClass,
		StartTime: &start,
	}
	if start.IsZero() {
		st.StartTime = nil
	}
	if r.ip != nil {
		st.PodIP = r.ip.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	allReady, anyRunning, allDone, anyFailed, ranBefore := true, false, true, false, false
	for _, c := range r.containers {
		cs := c.status()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		anyRunning = anyRunning || cs.State.Running != nil
		ranBefore = ranBefore || cs.RestartCount > 0 || cs.LastTerminationState.Terminated != nil || cs.State.Terminated != nil
		if cs.State.Terminated == nil {
			allDone = false
		} else if cs.State.Terminated.ExitCode != 0 {
			anyFailed = true
		}
	}
	switch {
	case failure != nil:
		st.Phase, st.Reason, st.Message = corev1.PodFailed, failure.reason, failure.message
		allReady = false
	case terminated && !anyRunning:
		st.Phase = corev1.PodSucceeded
		for _, c := range st.ContainerStatuses {
			if c.State.Terminated == nil {
				c.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Error", FinishedAt: metav1.Now()}}
			}
			if c.State.Terminated.ExitCode != 0 {
				st.Phase = corev1.PodFailed
			}
		}
		allReady = false
	case allDone && len(r.containers) > 0:
		st.Phase = corev1.PodSucceeded
		if anyFailed {
			st.Phase = corev1.PodFailed
		}
	case anyRunning || ranBefore:
		// Restarting containers keep the pod Running, as with the kubelet.
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	}
	ready := allReady && anyRunning && !terminated
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
	if !ready {
		st.Conditions[3].Reason = "ContainersNotReady"
		st.Conditions[2].Reason = "ContainersNotReady"
	}
	return st
}

func (r *podRuntime) String() string { return fmt.Sprintf("%s (%s)", r.key, r.ip) }
