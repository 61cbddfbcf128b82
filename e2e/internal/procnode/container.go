package procnode

import (
	"context"
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
)

// Restart back-off, as the kubelet's: 10 s doubling to 5 min, reset after a
// container ran 10 minutes without exiting.
const (
	backoffFirst = 10 * time.Second
	backoffMax   = 5 * time.Minute
	backoffReset = 10 * time.Minute
)

// container supervises one container of a pod: a process started through
// the pod-exec helper inside the pod's network namespace.
type container struct {
	pod     *podRuntime
	spec    corev1.Container
	binary  string
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

// run starts the container and restarts it per the pod's restartPolicy
// until ctx ends. args is the full helper command (pod-exec prefix
// included), env the resolved environment.
func (c *container) run(ctx context.Context, args []string, env []string) {
	backoff := backoffFirst
	for ctx.Err() == nil {
		if err := c.start(args, env); err != nil {
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

func (c *container) start(args, env []string) error {
	for _, d := range []string{filepath.Dir(c.logPath), filepath.Dir(c.pidPath())} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if _, err := os.Stat(c.logPath); err == nil {
		_ = os.Rename(c.logPath, c.previousLogPath())
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	workdir := filepath.Join(c.pod.dir, "containers", c.spec.Name)
	if c.spec.WorkingDir != "" {
		workdir = c.spec.WorkingDir
	}
	if err := os.MkdirAll(workdir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	cmd.Dir = workdir
	cmd.Stdout, cmd.Stderr = logf, logf
	// A pod's processes must not outlive the node that supervises them:
	// they stay in the node's process group (stopping the node daemon
	// signals the group), ask for SIGKILL if the node dies, and leave a
	// pid file that a restarted node reaps.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	_ = os.WriteFile(c.pidPath(), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"+c.binary+"\n"), 0o644)
	exited := make(chan struct{})
	c.mu.Lock()
	c.proc, c.exited, c.startedAt = cmd.Process, exited, time.Now()
	c.waiting, c.ready, c.startupDone, c.livenessKill = nil, false, c.spec.StartupProbe == nil, false
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
	c.pod.node.logger.Info("container started", "pod", c.pod.key, "container", c.spec.Name, "pid", cmd.Process.Pid)
	return nil
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
		ImageID:      "process://" + c.binary,
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
		if pid <= 0 || len(lines) < 2 {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.TrimSuffix(exe, " (deleted)") == lines[1] {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = os.RemoveAll(filepath.Join(stateDir, "pods"))
}
