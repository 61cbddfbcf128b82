package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpecFileIsTheBundlesConfigOrTheExecsProcess(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--root", "/run/r", "--log", "/l.json", "create", "--bundle", "/b/x", "--pid-file", "/p", "id"}, "/b/x/config.json"},
		{[]string{"--root=/run/r", "run", "-b", "/b/y", "id"}, "/b/y/config.json"},
		{[]string{"create", "id"}, "config.json"},
		{[]string{"--root", "/r", "exec", "--process", "/tmp/p.json", "--detach", "id"}, "/tmp/p.json"},
		{[]string{"--root", "/r", "start", "id"}, ""},
		{[]string{"--root", "/r", "delete", "--force", "id"}, ""},
	} {
		if got := specFile(c.args); got != c.want {
			t.Errorf("specFile(%q) = %q, want %q", c.args, got, c.want)
		}
	}
}

// A privileged container asks for every capability; what the bounding
// set lacks goes from every set, the rest stays, and nothing else of the
// file changes.
func TestBoundDropsOnlyWhatTheBoundingSetLacks(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	spec := `{"ociVersion":"1.0.2","process":{"args":["/sbin/init"],"capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_RESOURCE","CAP_SYS_ADMIN"],"effective":["CAP_SYS_RESOURCE","CAP_CHOWN"],"permitted":["CAP_SYS_ADMIN","CAP_SYS_RESOURCE"]}},"root":{"path":"rootfs"}}`
	if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{"CAP_CHOWN": true, "CAP_SYS_ADMIN": true}
	if err := bound(file, have); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(file)
	got := string(b)
	if strings.Contains(got, "CAP_SYS_RESOURCE") {
		t.Fatalf("CAP_SYS_RESOURCE still asked for: %s", got)
	}
	for _, want := range []string{`"bounding":["CAP_CHOWN","CAP_SYS_ADMIN"]`, `"effective":["CAP_CHOWN"]`, `"permitted":["CAP_SYS_ADMIN"]`, `"args":["/sbin/init"]`, `"root":{"path":"rootfs"}`} {
		if !strings.Contains(got, want) {
			t.Errorf("lacks %s: %s", want, got)
		}
	}
	// An exec's process file has the capabilities at its top.
	proc := filepath.Join(dir, "process.json")
	if err := os.WriteFile(proc, []byte(`{"args":["sh"],"capabilities":{"bounding":["CAP_SYS_RESOURCE","CAP_CHOWN"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := bound(proc, have); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(proc); strings.Contains(string(b), "CAP_SYS_RESOURCE") || !strings.Contains(string(b), "CAP_CHOWN") {
		t.Fatalf("exec's process file: %s", b)
	}
}
