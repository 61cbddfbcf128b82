package oci

import (
	"archive/tar"
	"github.com/google/go-containerregistry/pkg/name"
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

// Modes on disk follow the umask of the checkout and the build (a clone
// under umask 077 has 0600 files and 0700 directories): the image does
// not. The same tree under two umasks gives one digest; the executable bit
// and /tmp's sticky bit survive.
func TestModesDoNotDependOnTheUmask(t *testing.T) {
	a, b := rootfs(t), rootfs(t)
	_ = filepath.Walk(b, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			return err
		}
		if fi.IsDir() {
			return os.Chmod(p, 0o700)
		}
		return os.Chmod(p, fi.Mode().Perm()&0o700)
	})
	for _, dir := range []string{a, b} {
		if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777|os.ModeSticky); err != nil {
			t.Fatal(err)
		}
	}
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
		t.Fatalf("umask 022 and 077 trees give %s and %s", da, db)
	}
	layers, _ := imgA.Layers()
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	modes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		modes[h.Name] = h.Mode
	}
	if modes["usr/local/bin/prog"] != 0o755 || modes["tmp/"] != 0o1777 || modes["etc/passwd"] != 0o644 {
		t.Fatalf("modes in the layer: %o %o %o, want 755, 1777, 644", modes["usr/local/bin/prog"], modes["tmp/"], modes["etc/passwd"])
	}
}

func TestContainerdNameIsDockerHubsShortHost(t *testing.T) {
	for in, want := range map[string]string{
		"purchase-system/webserver:dev":        "docker.io/purchase-system/webserver:dev",
		"registry.k8s.io/pause:3.10.2":         "registry.k8s.io/pause:3.10.2",
		"localhost:5001/purchase-system/x:dev": "localhost:5001/purchase-system/x:dev",
	} {
		ref, err := name.ParseReference(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := ContainerdName(ref); got != want {
			t.Errorf("ContainerdName(%s) = %s, want %s", in, got, want)
		}
	}
}
