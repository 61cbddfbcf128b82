package podnet

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialInPod connects to addr from inside the pod's network namespace, as
// the kubelet does for kubectl port-forward: a server a pod binds to
// 127.0.0.1 only (a debug endpoint) is reachable that way and no other.
func DialInPod(ctx context.Context, ns, addr string) (net.Conn, error) {
	target, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		return nil, fmt.Errorf("network namespace of the pod: %w", err)
	}
	defer target.Close()
	// The socket is made in the namespace of the thread that makes it:
	// lock this goroutine to its thread, switch, dial, switch back.
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("entering the pod's network namespace: %w", err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, "tcp", addr)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: leave it locked, so it
		// ends with this goroutine instead of serving others.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leaving the pod's network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}
