// Command nodeprobe runs inside a pod of the node tests (image
// purchase-system/nodeprobe): it tries what a container must or must not
// be able to do and reports what happened, so the tests judge the node by
// what a process in it can really do.
//
//	nodeprobe confinement            JSON report of writes and mknod attempts, then sleeps
//	nodeprobe dial HOST:PORT...      exit 0 if every TCP connection opens within 3 s, 1 otherwise
//	nodeprobe watch SECONDS HOST:PORT   a TCP connection tried every second for SECONDS, one line each ("connected" or the error)
//	nodeprobe alloc MIB              touch MIB of memory, then sleep (an OOM-kill test)
//	nodeprobe sleep                  sleep until killed
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nodeprobe confinement | dial HOST:PORT... | watch SECONDS HOST:PORT | alloc MIB | sleep")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "confinement":
		report := confinement(os.Args[2:])
		b, _ := json.Marshal(report)
		// The test reads the report from the container's log.
		fmt.Println(string(b))
		sleep()
	case "dial":
		os.Exit(dial(os.Args[2:]))
	case "watch":
		secs, err := strconv.Atoi(os.Args[2])
		if err != nil || len(os.Args) != 4 {
			fmt.Fprintln(os.Stderr, "watch: SECONDS HOST:PORT")
			os.Exit(2)
		}
		// A NetworkPolicy takes effect a moment after a pod starts (the
		// enforcer programs its address): the test judges the last tries.
		for i := 0; i < secs; i++ {
			start := time.Now()
			dial(os.Args[3:])
			time.Sleep(time.Second - time.Since(start)%time.Second)
		}
	case "alloc":
		mib, err := strconv.Atoi(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "alloc: MIB must be a number")
			os.Exit(2)
		}
		alloc(mib)
		sleep()
	case "sleep":
		sleep()
	default:
		fmt.Fprintln(os.Stderr, "nodeprobe: unknown command", os.Args[1])
		os.Exit(2)
	}
}

// Report is what confinement found; an empty error string means the
// attempt succeeded.
type Report struct {
	UID             int               `json:"uid"`
	CorePatternOpen string            `json:"corePatternOpenForWrite"` // "" = it opened: the host's kernel setting is writable
	SysrqOpen       string            `json:"sysrqTriggerOpenForWrite"`
	Mknod           string            `json:"mknod"`
	DeviceOpen      string            `json:"deviceOpen"` // "" = the created node of the host's disk opened
	Files           map[string]string `json:"files"`      // path → "mode gid=N" (or the error) of each path asked about
	Token           string            `json:"token"`      // "" = the service account token was read
}

func confinement(paths []string) Report {
	r := Report{UID: os.Getuid(), Files: map[string]string{}}
	r.CorePatternOpen = tryOpenWrite("/proc/sys/kernel/core_pattern")
	r.SysrqOpen = tryOpenWrite("/proc/sysrq-trigger")
	// The host's first disk: a container must not create device nodes.
	if err := syscall.Mknod("/tmp/probe-disk", syscall.S_IFBLK|0o600, int(mkdev(253, 0))); err != nil {
		r.Mknod = err.Error()
		r.DeviceOpen = "not created"
	} else {
		// Creating a node is CAP_MKNOD's (in the default set of every
		// containerd and Docker node); using it is the devices cgroup's.
		r.DeviceOpen = tryOpen("/tmp/probe-disk", os.O_RDONLY)
		_ = os.Remove("/tmp/probe-disk")
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			r.Files[p] = "error: " + err.Error()
			continue
		}
		gid := -1
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			gid = int(sys.Gid)
		}
		r.Files[p] = fmt.Sprintf("%04o gid=%d", st.Mode().Perm(), gid)
	}
	if _, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/token"); err != nil {
		r.Token = err.Error()
	}
	return r
}

func tryOpenWrite(path string) string { return tryOpen(path, os.O_WRONLY) }

func tryOpen(path string, flag int) string {
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return err.Error()
	}
	f.Close()
	return ""
}

func mkdev(major, minor uint32) uint64 {
	return uint64(major&0xfff)<<8 | uint64(minor&0xff) | uint64(minor&^0xff)<<12 | uint64(major&^0xfff)<<32
}

func dial(addrs []string) int {
	code := 0
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", a, 3*time.Second)
		if err != nil {
			fmt.Printf("%s: %v\n", a, err)
			code = 1
			continue
		}
		c.Close()
		fmt.Printf("%s: connected\n", a)
	}
	return code
}

// alloc touches every page, so the memory is really charged to the
// container's cgroup.
func alloc(mib int) {
	var keep [][]byte
	for i := 0; i < mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
	}
	fmt.Printf("allocated %d MiB\n", len(keep))
	sleepKeep(keep)
}

func sleepKeep(keep [][]byte) {
	sleep()
	_ = keep
}

func sleep() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}
