package take

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A shim killed leaves its socket; down finds it by what the process
// holds, so the lookup must name the sockets a process listens on, and
// only those.
func TestListeningSocketsNamesWhatTheProcessHolds(t *testing.T) {
	dir := t.TempDir()
	held := filepath.Join(dir, "held")
	l, err := net.Listen("unix", held)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other := filepath.Join(dir, "closed")
	l2, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	l2.(*net.UnixListener).SetUnlinkOnClose(false)
	l2.Close()

	got := ListeningSockets(os.Getpid())
	if !slices.Contains(got, held) {
		t.Errorf("ListeningSockets(self) = %v, want it to hold %s", got, held)
	}
	if slices.Contains(got, other) {
		t.Errorf("ListeningSockets(self) = %v names %s, which is closed", got, other)
	}
}
