package procnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/images/oci"
)

// Restart back-off, as the kubelet's: 10 s doubling to 5 min, reset after a
// container ran 10 minutes without exiting.
const (
	backoffFirst = 10 * time.Second
	backoffMax   = 5 * time.Minute
	backoffReset = 10 * time.Minute
)

// container supervises one container of a pod: a process started from
// its image through the pod-exec helper, in the pod's network namespace
// and namespaces of its own.
type container struct {
	pod     *podRuntime
	spec    corev1.Container
	image   oci.Image
	logPath string

	mu           sync.Mutex
	proc         *os.Process
	exited       chan struct{} // closed when the current process exits
	startedAt    time.Time
	lastExit     *corev1.ContainerStateTerminated
	restarts     int32
	waiting      *corev1.ContainerStateWaiting
	ready        bool
	startupDone  bool
	cpu          cpuSample
	stopping     bool
	livenessKill bool
}

// pidPath records the running process, for ReapOrphans.
func (c *container) pidPath() string { return filepath.Join(c.pod.dir, "pids", c.spec.Name) }

// PreviousLog is where a container's output from before its last restart
// is kept (kubectl logs --previous).
func (c *container) previousLogPath() string { return c.logPath + ".previous" }

// dir holds the container's spec and its writable layer.
func (c *container) dir() string { return filepath.Join(c.pod.dir, "containers", c.spec.Name) }

// run starts the container from spec and restarts it per the pod's
// restartPolicy until ctx ends.
func (c *container) run(ctx context.Context, spec podexec.Spec) {
	backoff := backoffFirst
	for ctx.Err() == nil {
		if err := c.start(spec); err != nil {
			c.setWaiting("RunContainerError", err.Error())
			c.pod.node.logger.Error("container start failed", "pod", c.pod.key, "container", c.spec.Name, "err", err)
		} else {
			c.pod.changed()
			ran := c.waitExit(ctx)
			if ctx.Err() != nil {
				return
			}
			if ran > backoffReset {
				backoff = backoffFirst
			}
		}
		c.mu.Lock()
		last := c.lastExit
		c.mu.Unlock()
		policy := c.pod.spec.Spec.RestartPolicy
		if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && last != nil && last.ExitCode == 0) {
			c.pod.changed()
			return
		}
		msg := fmt.Sprintf("back-off %s restarting failed container %s in pod %s", backoff, c.spec.Name, c.pod.key)
		c.setWaiting("CrashLoopBackOff", msg)
		c.pod.changed()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, backoffMax)
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
	}
}

func (c *container) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
	c.mu.Unlock()
}

func (c *container) start(spec podexec.Spec) error {
	for _, d := range []string{filepath.Dir(c.logPath), filepath.Dir(c.pidPath()), c.dir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Every start is a new container: a fresh writable layer over the
	// image.
	for _, d := range []string{spec.Upper, spec.Work} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	specFile := filepath.Join(c.dir(), "spec.json")
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return err
	}
	if _, err := os.Stat(c.logPath); err == nil {
		_ = os.Rename(c.logPath, c.previousLogPath())
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// ip netns exec puts the helper in the pod's network namespace and a
	// mount namespace of its own; the clone flags give it PID and UTS
	// namespaces of its own: the container's program is PID 1 there.
	args := append([]string{"ip", "netns", "exec", c.pod.ns}, c.pod.node.cfg.PodExec...)
	cmd := exec.Command(args[0], append(args[1:], "--spec", specFile)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = c.dir()
	cmd.Stdout, cmd.Stderr = logf, logf
	// A pod's processes must not outlive the node that supervises them:
	// they stay in the node's process group (stopping the node daemon
	// signals the group), ask for SIGKILL if the node dies, and leave a
	// pid file that a restarted node reaps.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS}
	if err := cmd.Start(); err != nil {
		return err
	}
	_ = os.WriteFile(c.pidPath(), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"+processStart(cmd.Process.Pid)+"\n"), 0o644)
	exited := make(chan struct{})
	c.mu.Lock()
	c.proc, c.exited, c.startedAt = cmd.Process, exited, time.Now()
	c.waiting, c.startupDone, c.livenessKill = nil, c.spec.StartupProbe == nil, false
	// Without a readiness probe the kubelet counts a started container
	// Ready.
	c.ready = c.spec.ReadinessProbe == nil && c.startupDone
	c.cpu = cpuSample{}
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		c.lastExit = terminated(cmd.ProcessState, err, c.startedAt, c.livenessKill)
		c.proc, c.ready = nil, false
		exit := *c.lastExit
		c.mu.Unlock()
		c.pod.node.logger.Info("container exited", "pod", c.pod.key, "container", c.spec.Name,
			"exit_code", exit.ExitCode, "signal", exit.Signal, "reason", exit.Reason)
		close(exited)
		c.pod.changed()
	}()
	c.pod.node.logger.Info("container started", "pod", c.pod.key, "container", c.spec.Name, "pid", cmd.Process.Pid, "image", c.image.Ref+"@"+c.image.Digest.String())
	return nil
}

// processStart is a process's start time in clock ticks since boot (field
// 22 of /proc/<pid>/stat): with the pid it names one process, even after
// the pid is reused.
func processStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		if f := strings.Fields(s[i+1:]); len(f) > 19 {
			return f[19]
		}
	}
	return ""
}

// waitExit waits for the current process to exit (or ctx to end) and
// returns how long it ran.
func (c *container) waitExit(ctx context.Context) time.Duration {
	c.mu.Lock()
	exited, started := c.exited, c.startedAt
	c.mu.Unlock()
	select {
	case <-exited:
	case <-ctx.Done():
	}
	return time.Since(started)
}

func terminated(ps *os.ProcessState, waitErr error, started time.Time, killedByLiveness bool) *corev1.ContainerStateTerminated {
	t := &corev1.ContainerStateTerminated{
		StartedAt:  metav1.NewTime(started),
		FinishedAt: metav1.Now(),
		Reason:     "Completed",
	}
	if ps == nil {
		t.ExitCode, t.Reason, t.Message = 128, "Error", fmt.Sprint(waitErr)
		return t
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Signal = int32(ws.Signal())
		t.ExitCode = 128 + int32(ws.Signal())
	} else {
		t.ExitCode = int32(ps.ExitCode())
	}
	if t.ExitCode != 0 {
		t.Reason = "Error"
	}
	if killedByLiveness {
		t.Message = "killed after failing its liveness probe"
	}
	return t
}

// stop sends SIGTERM and, after grace, SIGKILL; it returns once the
// process is gone.
func (c *container) stop(grace time.Duration) {
	c.mu.Lock()
	c.stopping = true
	exited, p := c.exited, c.proc
	c.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(grace):
	}
	c.pod.node.logger.Warn("container did not stop within its grace period; killing", "pod", c.pod.key, "container", c.spec.Name, "grace", grace.String())
	_ = p.Signal(syscall.SIGKILL)
	<-exited
}

// killForLiveness restarts a container whose liveness probe failed.
func (c *container) killForLiveness(grace time.Duration) {
	c.mu.Lock()
	c.livenessKill = true
	c.mu.Unlock()
	go c.stop(grace)
}

// status reports the container as the API shows it.
func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      c.image.Ref + "@" + c.image.Digest.String(),
		RestartCount: c.restarts,
		Ready:        c.ready && c.proc != nil,
		LastTerminationState: corev1.ContainerState{
			Terminated: c.lastExit,
		},
	}
	started := c.proc != nil && c.startupDone
	st.Started = &started
	switch {
	case c.proc != nil:
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
		st.ContainerID = "process://" + strconv.Itoa(c.proc.Pid)
	case c.waiting != nil:
		st.State.Waiting = c.waiting.DeepCopy()
	case c.lastExit != nil:
		st.State.Terminated = c.lastExit.DeepCopy()
		st.LastTerminationState = corev1.ContainerState{}
	default:
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	return st
}

// pid returns the running process's pid, 0 if none.
func (c *container) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.Pid
}

// ReapOrphans kills the processes a previous node left behind (it was
// killed before it could stop its pods) and removes their pod directories:
// the pods will be created again from the API.
func ReapOrphans(stateDir string) {
	files, _ := filepath.Glob(filepath.Join(stateDir, "pods", "*", "pids", "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.SplitN(strings.TrimSpace(string(b)), "\n", 2)
		pid, _ := strconv.Atoi(lines[0])
		if pid <= 0 || len(lines) < 2 || lines[1] == "" {
			continue
		}
		if processStart(pid) == lines[1] {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.RemoveAll(filepath.Join(stateDir, "pods"))
}
