// Package daemon starts programs that outlive the command that started
// them (the dev cluster's components), and finds and stops them again by
// pid file.
package daemon

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Dir holds one set of daemons: pids/<name>.pid and logs/<name>.log.
type Dir string

func (d Dir) pidFile(name string) string { return filepath.Join(string(d), "pids", name+".pid") }

// LogFile is where a daemon's output goes.
func (d Dir) LogFile(name string) string { return filepath.Join(string(d), "logs", name+".log") }

// Spec is a daemon to start.
type Spec struct {
	Name string
	Path string
	Args []string
	Env  []string // added to this process's environment
}

// Start runs spec in its own session, detached from the caller's terminal,
// unless a daemon of that name is already running. It returns the pid.
func (d Dir) Start(spec Spec) (int, error) {
	if pid, ok := d.Running(spec.Name); ok {
		return pid, nil
	}
	for _, sub := range []string{"pids", "logs"} {
		if err := os.MkdirAll(filepath.Join(string(d), sub), 0o700); err != nil {
			return 0, err
		}
	}
	logf, err := os.OpenFile(d.LogFile(spec.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n--- %s starting %s %s\n", time.Now().Format(time.RFC3339), spec.Path, strings.Join(spec.Args, " "))
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", spec.Name, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while we are still around; once we exit, init does.
	go func() { _ = cmd.Wait() }()
	start, err := StartTime(pid)
	if err != nil {
		return 0, fmt.Errorf("%s exited at once: %w (log: %s)", spec.Name, err, d.LogFile(spec.Name))
	}
	return pid, os.WriteFile(d.pidFile(spec.Name), []byte(fmt.Sprintf("%d\n%s\n%d\n", pid, spec.Path, start)), 0o600)
}

// StartTime is when pid started, in clock ticks after boot (field 22 of
// /proc/<pid>/stat): with the pid it names one process, never a later one
// that reuses the pid.
func StartTime(pid int) (uint64, error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: count
	// fields after the last ')'. starttime is field 22, the 20th after it.
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Alive reports whether the process pid that started at start still runs
// (and is not a zombie awaiting its reaping).
func Alive(pid int, start uint64) bool {
	got, err := StartTime(pid)
	if err != nil || got != start {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// Running reports the daemon's pid if its pid file names a live process
// running the same program (a reused pid does not count).
func (d Dir) Running(name string) (int, bool) {
	b, err := os.ReadFile(d.pidFile(name))
	if err != nil {
		return 0, false
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	pid, err := strconv.Atoi(lines[0])
	if err != nil || pid <= 0 {
		return 0, false
	}
	if len(lines) >= 3 {
		start, err := strconv.ParseUint(lines[2], 10, 64)
		if err != nil || !Alive(pid, start) {
			return 0, false
		}
	}
	lines = lines[:min(len(lines), 2)]
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0, false
	}
	if len(lines) == 2 {
		want, _ := filepath.EvalSymlinks(lines[1])
		if strings.TrimSuffix(exe, " (deleted)") != want && exe != lines[1] {
			return 0, false
		}
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// A zombie (state Z) has exited; it only awaits reaping.
		if f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return 0, false
		}
	}
	return pid, true
}

// Stop sends SIGTERM to the daemon's process group, waits up to grace, then
// SIGKILLs it. It removes the pid file. Stopping what is not running is
// not an error.
func (d Dir) Stop(name string, grace time.Duration) error {
	defer os.Remove(d.pidFile(name))
	pid, ok := d.Running(name)
	if !ok {
		return nil
	}
	// The daemon leads its own session: signal the whole group so helpers
	// it started go too.
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if _, ok := d.Running(name); !ok {
			// The leader is gone; whatever of its group is left (a
			// child still draining) goes with it.
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	for range 100 {
		if _, ok := d.Running(name); !ok {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New(name + " did not exit after SIGKILL")
}

// Names lists the daemons that have pid files.
func (d Dir) Names() []string {
	files, _ := filepath.Glob(filepath.Join(string(d), "pids", "*.pid"))
	var out []string
	for _, f := range files {
		out = append(out, strings.TrimSuffix(filepath.Base(f), ".pid"))
	}
	return out
}
