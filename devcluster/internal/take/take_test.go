package take

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/purchase-system/purchase-system/devcluster/internal/ledger"
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

// A killed shim's socket stays in the shared socket directory, and only
// the bundle of the containerd that ran it says whose it is: both bundle
// formats must name it (containerd 2's bootstrap.json for the node,
// containerd 1.6's address file for Docker's), and nothing outside the
// shared directory is taken.
func TestShimSocketsAreReadFromBothBundleFormats(t *testing.T) {
	state := t.TempDir()
	bundle := func(id, file, content string) {
		dir := filepath.Join(state, "io.containerd.runtime.v2.task", "moby", id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bundle("v2", "bootstrap.json", `{"version":2,"address":"unix:///run/containerd/s/aaa","protocol":"ttrpc"}`)
	bundle("v16", "address", "unix:///run/containerd/s/bbb\n")
	bundle("elsewhere", "address", "unix:///run/someone-else/s/ccc")

	got := ShimSockets(state)
	slices.Sort(got)
	want := []string{"/run/containerd/s/aaa", "/run/containerd/s/bbb"}
	if !slices.Equal(got, want) {
		t.Fatalf("ShimSockets = %v, want %v", got, want)
	}

	led, err := ledger.Open(filepath.Join(t.TempDir(), "ledger.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // recording twice records each once
		if err := RecordShimSockets(led, state); err != nil {
			t.Fatal(err)
		}
	}
	var files []string
	for _, e := range led.Entries() {
		if e.Kind == ledger.File {
			files = append(files, e.Name)
		}
	}
	slices.Sort(files)
	if !slices.Equal(files, want) {
		t.Fatalf("ledger files = %v, want %v", files, want)
	}
}
