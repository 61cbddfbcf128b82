package oci

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func rootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range map[string]string{
		"usr/local/bin/prog":            "#!binary",
		"etc/passwd":                    "nonroot:x:65532:65532::/:/sbin/nologin\n",
		"etc/ssl/certs/ca-certificates": "certs",
	} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.Contains(p, "bin/") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(c), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("prog", filepath.Join(dir, "usr/local/bin/alias")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func spec(root string) Spec {
	return Spec{Root: root, Entrypoint: []string{"/usr/local/bin/prog"}, User: "65532:65532", WorkingDir: "/",
		ExposedPorts: []string{"8080/tcp"}, Labels: map[string]string{"org.opencontainers.image.version": "v1"},
		Created: time.Unix(1795800000, 0).UTC()}
}

// The same tree and settings give the same digest, whatever the files'
// times on disk; the archive's bytes are the same too.
func TestBuildsAreReproducible(t *testing.T) {
	a, b := rootfs(t), rootfs(t)
	later := time.Now().Add(time.Hour)
	_ = os.Chtimes(filepath.Join(b, "etc/passwd"), later, later)
	imgA, err := Build(spec(a))
	if err != nil {
		t.Fatal(err)
	}
	imgB, err := Build(spec(b))
	if err != nil {
		t.Fatal(err)
	}
	da, _ := imgA.Digest()
	db, _ := imgB.Digest()
	if da != db {
		t.Fatalf("digests differ: %s vs %s", da, db)
	}
	dir := t.TempDir()
	pa, pb := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	if err := WriteArchive(pa, imgA, "example/prog:dev", "example/prog:v1"); err != nil {
		t.Fatal(err)
	}
	if err := WriteArchive(pb, imgB, "example/prog:dev", "example/prog:v1"); err != nil {
		t.Fatal(err)
	}
	ba, _ := os.ReadFile(pa)
	bb, _ := os.ReadFile(pb)
	if string(ba) != string(bb) {
		t.Fatal("archives of one image differ")
	}
	// A different setting is a different image.
	s := spec(a)
	s.User = "0:0"
	imgC, _ := Build(s)
	if dc, _ := imgC.Digest(); dc == da {
		t.Fatal("another user, same digest")
	}
}

func TestArchiveLoadsIntoTheStoreAndRuns(t *testing.T) {
	img, err := Build(spec(rootfs(t)))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "prog.tar")
	if err := WriteArchive(archive, img, "example/prog:dev", "example/prog:v1"); err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	refs, err := st.Load(archive)
	if err != nil || len(refs) != 2 {
		t.Fatalf("loaded %v, %v", refs, err)
	}
	want, _ := img.Digest()
	for _, ref := range []string{"example/prog:dev", "docker.io/example/prog:v1", "example/prog@" + want.String()} {
		got, err := st.Resolve(ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if got.Digest != want || got.Config.User != "65532:65532" || got.Config.Entrypoint[0] != "/usr/local/bin/prog" {
			t.Fatalf("%s: %+v", ref, got)
		}
		b, err := os.ReadFile(filepath.Join(got.Rootfs, "usr/local/bin/prog"))
		if err != nil || string(b) != "#!binary" {
			t.Fatalf("%s: unpacked program %q %v", ref, b, err)
		}
		if l, err := os.Readlink(filepath.Join(got.Rootfs, "usr/local/bin/alias")); err != nil || l != "prog" {
			t.Fatalf("symlink %q %v", l, err)
		}
		fi, _ := os.Stat(filepath.Join(got.Rootfs, "usr/local/bin/prog"))
		if fi.Mode().Perm() != 0o755 {
			t.Fatalf("program mode %v", fi.Mode())
		}
	}
	// Loading again replaces, not duplicates.
	if _, err := st.Load(archive); err != nil {
		t.Fatal(err)
	}
	list, _ := st.List()
	if len(list) != 2 {
		t.Fatalf("store lists %v", list)
	}
	_, err = st.Resolve("example/other:dev")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "index.docker.io/example/prog:dev") {
		t.Fatalf("missing image: %v, want ErrNotFound naming what the store has", err)
	}
}
