package podexec_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/purchase-system/purchase-system/e2e/internal/podexec"
	"github.com/purchase-system/purchase-system/testkit/realdeps"
	"github.com/purchase-system/purchase-system/testkit/testproc"
)

func TestParseMount(t *testing.T) {
	for in, want := range map[string]podexec.Mount{
		"/a:/b":    {Source: "/a", Target: "/b"},
		"/a:/b:ro": {Source: "/a", Target: "/b", ReadOnly: true},
	} {
		got, err := podexec.ParseMount(in)
		if err != nil || got != want {
			t.Errorf("ParseMount(%q) = %+v %v", in, got, err)
		}
	}
	for _, bad := range []string{"/a", "a:/b", "/a:/b:rw", "/a:b"} {
		if _, err := podexec.ParseMount(bad); err == nil {
			t.Errorf("ParseMount(%q) accepted", bad)
		}
	}
}

// A mount may hide the source of a later one: an emptyDir mounted on /tmp
// hides a pod directory under /tmp. Every source is opened before the
// first mount, so the later mount still finds its source.
func TestAMountDoesNotHideALaterMountsSource(t *testing.T) {
	if os.Geteuid() != 0 {
		realdeps.Missing(t, "needs root for a mount namespace (make test runs as root)")
	}
	base := t.TempDir()
	empty, secrets, target := filepath.Join(base, "empty"), filepath.Join(base, "pod", "secrets"), filepath.Join(t.TempDir(), "secrets")
	for _, d := range []string{empty, secrets} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(secrets, "token"), []byte("t0ken"), 0o644); err != nil {
		t.Fatal(err)
	}
	helper := testproc.Binary(t, "devcluster")
	// First mount: empty on base, which holds the second mount's source.
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", helper, "pod-exec",
		"--mount", empty+":"+base, "--mount", secrets+":"+target+":ro", "--", "/bin/cat", filepath.Join(target, "token"))
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "t0ken" {
		t.Fatalf("pod-exec: %v\n%s", err, out)
	}
}
