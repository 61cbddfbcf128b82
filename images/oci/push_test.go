package oci

import (
	"archive/tar"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// A push sends the archive's image byte for byte: read back from the
// registry by the printed digest, by tag, under either naming (a mirror
// keeps the repository path, --into takes the last element), its digest
// is the one the archive holds.
func TestPushKeepsTheArchivesDigest(t *testing.T) {
	img, err := Build(spec(rootfs(t)))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	archive := filepath.Join(t.TempDir(), "prog.tar")
	if err := WriteArchive(archive, img, "purchase-system/prog:dev", "registry.k8s.io/pause:3.10.2"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	for rename, wantRefs := range map[string][]string{
		"mirror": {host + "/purchase-system/prog:dev", host + "/pause:3.10.2"},
		"into":   {host + "/acme/prog:dev", host + "/acme/pause:3.10.2"},
	} {
		r := Mirror(host)
		if rename == "into" {
			r = Into(host + "/acme/")
		}
		pushed, err := PushArchives(context.Background(), Archives(filepath.Dir(archive)), r)
		if err != nil {
			t.Fatalf("%s: %v", rename, err)
		}
		if len(pushed) != 2 {
			t.Fatalf("%s: pushed %+v, want both tags", rename, pushed)
		}
		for i, p := range pushed {
			if p.Target.String() != wantRefs[i] || p.Digest != want {
				t.Errorf("%s: pushed %s %s, want %s %s", rename, p.Target, p.Digest, wantRefs[i], want)
			}
			for _, ref := range []string{p.Pinned(), p.Target.String()} {
				r, err := name.ParseReference(ref, name.Insecure)
				if err != nil {
					t.Fatal(err)
				}
				d, err := remote.Head(r)
				if err != nil || d.Digest != want {
					t.Errorf("%s: %s reads back as %v (%v), want %s", rename, ref, d, err, want)
				}
			}
		}
		if pushed[0].Name != "purchase-system/prog" || pushed[1].Name != "registry.k8s.io/pause" {
			t.Errorf("names %q %q, want what manifests write", pushed[0].Name, pushed[1].Name)
		}
	}
}

// The pins are a kustomize Component naming each image once, by digest.
func TestPinsNameEveryImageByDigest(t *testing.T) {
	img, err := Build(spec(rootfs(t)))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	tag, _ := name.NewTag("127.0.0.1:5000/purchase-system/prog:dev")
	tag2, _ := name.NewTag("127.0.0.1:5000/purchase-system/prog:v1")
	file := filepath.Join(t.TempDir(), "k", "kustomization.yaml")
	pushed := []Pushed{{Name: "purchase-system/prog", Target: tag, Digest: d}, {Name: "purchase-system/prog", Target: tag2, Digest: d}}
	for keep, newName := range map[bool]string{true: "purchase-system/prog", false: "127.0.0.1:5000/purchase-system/prog"} {
		if err := WritePins(file, pushed, keep); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(file)
		want := "kind: Component\nimages:\n  - name: purchase-system/prog\n    newName: " + newName + "\n    digest: " + d.String() + "\n"
		if !strings.HasSuffix(string(b), want) {
			t.Errorf("keepName=%v: pins\n%s\nwant them to end with\n%s", keep, b, want)
		}
	}
}

// An archive entry that would land outside the unpacking directory is
// refused.
func TestUntarStaysInside(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(t.TempDir(), "evil.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	if err := tw.WriteHeader(&tar.Header{Name: "../../escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write([]byte("x"))
	tw.Close()
	f.Close()
	if err := untar(archive, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "escape")); err != nil {
		t.Errorf("../../escape did not land inside the directory: %v", err)
	}

	// A link is how an archive reaches outside without "..": a symlink
	// to a directory elsewhere, then a file written through it; or a hard
	// link to a file elsewhere. An image archive holds neither: both are
	// refused, and nothing lands outside.
	for name, entries := range map[string]func(outside string) []tar.Header{
		"symlink then a file through it": func(outside string) []tar.Header {
			return []tar.Header{{Name: "out", Typeflag: tar.TypeSymlink, Linkname: outside}, {Name: "out/planted", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}}
		},
		"hard link": func(outside string) []tar.Header {
			return []tar.Header{{Name: "hard", Typeflag: tar.TypeLink, Linkname: filepath.Join(outside, "target")}}
		},
	} {
		outside := t.TempDir()
		archive := filepath.Join(t.TempDir(), "links.tar")
		f, err := os.Create(archive)
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		for _, h := range entries(outside) {
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Size > 0 {
				_, _ = tw.Write([]byte("x"))
			}
		}
		tw.Close()
		f.Close()
		if err := untar(archive, t.TempDir()); err == nil {
			t.Errorf("%s: unpacked without error, want it refused", name)
		}
		if ents, _ := os.ReadDir(outside); len(ents) > 0 {
			t.Errorf("%s: wrote outside the directory: %v", name, ents)
		}
	}
}

func TestPinTextPinsImagesNamedInsideAnyManifest(t *testing.T) {
	d, _ := v1.NewHash("sha256:" + strings.Repeat("ab", 32))
	pushed := []Pushed{{Name: "busybox", Digest: d}, {Name: "registry.k8s.io/pause", Digest: d}}
	in := "spec:\n  containers:\n    - name: helper\n      image: busybox:1.35.0\n    - image: \"registry.k8s.io/pause:3.10.2\"\n    - image: other:1\n    - image: busybox@sha256:00\n"
	got := PinText(in, pushed)
	for _, want := range []string{"      image: busybox@" + d.String() + "\n", "    - image: registry.k8s.io/pause@" + d.String() + "\n", "    - image: other:1\n", "image: busybox@sha256:00\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("PinText lacks %q:\n%s", want, got)
		}
	}
}
