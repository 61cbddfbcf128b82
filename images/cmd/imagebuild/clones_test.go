package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestTwoClonesBuildTheSameImages builds every image (scripts/images.sh
// build, as make images does) in two fresh clones of this commit, one
// checked out and built under umask 022, the other under 077, and wants the
// same digest for each image: what goes into an image is the commit, not
// the checkout (file modes follow the umask; times, owners and order
// must not leak either). The oci package's tests cover the archive code;
// this covers the whole script, binaries included.
func TestTwoClonesBuildTheSameImages(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test builds all 13 images twice, about 35 s with the Go build cache warm; make test runs it")
	}
	if _, err := exec.LookPath("git"); err != nil {
		missing(t, "needs git to clone the checkout (apt-get install git)")
	}
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		missing(t, "runs in a git checkout: it clones the commit (a source tarball has none)")
	}
	root := strings.TrimSpace(string(top))
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	commit := strings.TrimSpace(string(head))

	// build runs on its own goroutine: it reports with Errorf (FailNow
	// belongs to the test's goroutine) and returns nil.
	build := func(umask string) map[string]string {
		dir := filepath.Join(t.TempDir(), "clone")
		script := "umask " + umask + " && git clone -q --no-local " + root + " " + dir +
			" && cd " + dir + " && git checkout -q --detach " + commit + " && scripts/images.sh build"
		cmd := exec.Command("bash", "-c", script)
		// Each clone builds its own tools (bin/imagebuild): nothing of the
		// test's checkout may stand in for the clone's.
		cmd.Env = withoutEnv(os.Environ(), "BIN_DIR")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Errorf("umask %s: %v\n%s\n%s", umask, err, out.String(), errOut.String())
			return nil
		}
		// imagebuild prints "<archive> <digest> <tag>...", one image a line.
		digests := map[string]string{}
		for _, line := range strings.Split(out.String(), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && strings.HasSuffix(f[0], ".tar") && strings.HasPrefix(f[1], "sha256:") {
				digests[filepath.Base(f[0])] = f[1]
			}
		}
		if len(digests) < 3 {
			t.Errorf("umask %s: %d images in the build's output:\n%s", umask, len(digests), out.String())
			return nil
		}
		return digests
	}
	// Side by side: each build waits on its own disk and compiler half the
	// time (the package cache they share is locked per package).
	var a, b map[string]string
	var wg sync.WaitGroup
	wg.Go(func() { a = build("022") })
	wg.Go(func() { b = build("077") })
	wg.Wait()
	if a == nil || b == nil {
		return // build reported why
	}
	for image, da := range a {
		if db, ok := b[image]; !ok {
			t.Errorf("%s: built under umask 022 only", image)
		} else if da != db {
			t.Errorf("%s: %s under umask 022, %s under 077", image, da, db)
		}
	}
	if len(b) != len(a) {
		t.Errorf("%d images under umask 022, %d under 077", len(a), len(b))
	}
	if !t.Failed() {
		t.Logf("%d images, the same digests from both clones", len(a))
	}
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// missing fails the test under make test, which sets REQUIRE_REAL_DEPS and
// must run it, and skips it otherwise. It is testkit/realdeps.Missing;
// that module is not imported here because its requirements would move
// this module's compression library, and with it every image digest.
func missing(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("REQUIRE_REAL_DEPS") != "" {
		t.Fatalf("%s (REQUIRE_REAL_DEPS is set: make test must run this test)", why)
	}
	t.Skip(why)
}
