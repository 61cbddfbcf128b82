package rootfs

import (
	"debug/elf"
	"os"
	"path/filepath"
	"testing"

	"github.com/purchase-system/purchase-system/testkit/realdeps"
)

// A program of the build machine (dynamically linked against glibc) in a
// root that has, or lacks, its C library.
func TestMissingLibrariesFollowsTheImagesLinks(t *testing.T) {
	prog := "/usr/bin/true"
	f, err := elf.Open(prog)
	if err != nil {
		realdeps.Missing(t, "needs a dynamically linked program of this machine to check (%s: %v); Debian's is one", prog, err)
	}
	needed, _ := f.DynString(elf.DT_NEEDED)
	f.Close()
	if len(needed) == 0 {
		realdeps.Missing(t, "%s is statically linked on this machine: it needs no library, so it cannot show one missing", prog)
	}
	libc := needed[0]

	root := t.TempDir()
	put := func(rel string, from string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, rel), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	put("usr/bin/true", prog)

	missing, err := MissingLibraries(root, []string{"/usr/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 1 || missing[0].Library != libc || missing[0].Object != "/usr/bin/true" {
		t.Fatalf("missing %v, want %s needed by /usr/bin/true", missing, libc)
	}

	// The library where the loader looks, reached through an absolute
	// symlink of a directory (as merged-/usr images have /lib -> /usr/lib):
	// it must resolve inside the root, and the library's own needs count.
	hostLibc, err := filepath.EvalSymlinks(filepath.Join("/lib/x86_64-linux-gnu", libc))
	if err != nil {
		realdeps.Missing(t, "this machine's %s is not where Debian puts it (%v): the test copies it from there", libc, err)
	}
	put("usr/lib/x86_64-linux-gnu/"+libc, hostLibc)
	if err := os.Symlink("/usr/lib", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	missing, err = MissingLibraries(root, []string{"/usr/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		if m.Library == libc {
			t.Fatalf("%s reported missing although the image has it: %v", libc, missing)
		}
	}
	// glibc needs the loader, which is not in this root.
	if len(missing) == 0 || missing[0].Object != "/lib/x86_64-linux-gnu/"+libc {
		t.Fatalf("missing %v, want the loader needed by %s", missing, libc)
	}
}
