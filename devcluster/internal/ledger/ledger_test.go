package ledger

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestRecordSurvivesAReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "host.jsonl")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Kind: Link, Name: "psbr0"},
		{Kind: Sysctl, Name: "net/ipv4/ip_forward", Old: "0", New: "1"},
		{Kind: Rule, Name: "iptables/raw/PREROUTING", Args: []string{"-j", "DEVCLUSTER-LOCALNET"}},
	}
	for _, e := range want {
		if err := l.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	again, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again.Entries(), want) {
		t.Fatalf("reloaded %v, want %v", again.Entries(), want)
	}
	if e, ok := again.Find(Sysctl, "net/ipv4/ip_forward"); !ok || e.Old != "0" {
		t.Fatalf("Find = %v %v", e, ok)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v (%v), want 0600: it names the host's settings", st.Mode(), err)
	}
}

func TestNoRecordIsErrNone(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "none.jsonl")); !errors.Is(err, ErrNone) {
		t.Fatalf("Load of a missing record = %v, want ErrNone", err)
	}
}

// A crash while an entry is written leaves half a line at the end: what
// it was about to take was never taken, and the rest still loads.
func TestAHalfWrittenLastLineIsDropped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "host.jsonl")
	if err := os.WriteFile(path, []byte(`{"kind":"link","name":"psbr0"}`+"\n"+`{"kind":"sysc`), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Entries(); len(got) != 1 || got[0].Name != "psbr0" {
		t.Fatalf("entries %v, want the link only", got)
	}
	// A damaged line in the middle is not guessed around.
	if err := os.WriteFile(path, []byte(`{"kind":"link","name":"psbr0"}`+"\n"+`garbage`+"\n"+`{"kind":"dir","name":"/x"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil {
		t.Fatal("a damaged line before others loaded without error")
	}
}

func TestKeepRewritesOrRemoves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "host.jsonl")
	l, _ := Open(path)
	for _, n := range []string{"/a", "/b", "/c"} {
		if err := l.Record(Entry{Kind: Dir, Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Keep([]Entry{{Kind: Dir, Name: "/b"}}); err != nil {
		t.Fatal(err)
	}
	again, _ := Load(path)
	if got := again.Entries(); len(got) != 1 || got[0].Name != "/b" {
		t.Fatalf("after Keep: %v", got)
	}
	if err := l.Keep(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Keep(nil) left the record: %v", err)
	}
}

// The state directory is root's; the parents it needs are not made
// private with it (the checkout's .cache holds PostgreSQL's data, which
// the postgres user must reach).
func TestPrivateDirLeavesItsParentsOpen(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, ".cache", "devcluster")
	if err := PrivateDir(dir); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Dir(dir): 0o755} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, st.Mode().Perm(), err, want)
		}
	}
	l, _ := Open(filepath.Join(root, "other", "state", "host.jsonl"))
	if err := l.Record(Entry{Kind: Dir, Name: "/x"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(root, "other")); st.Mode().Perm() != 0o755 {
		t.Errorf("a record made its parent %v, want 0755", st.Mode().Perm())
	}
}
