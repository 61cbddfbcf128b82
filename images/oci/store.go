package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// refAnnotation names an image in the store's index.
const refAnnotation = "org.opencontainers.image.ref.name"

// Store is the local node's image store: an OCI image layout (dir/layout)
// naming each image by its full reference, and each image's root
// filesystem unpacked once per digest (dir/rootfs/<digest>). make images
// and devcluster load-image fill it; the node only reads it.
type Store struct {
	dir string
}

// OpenStore opens (creating) the store in dir.
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir}
	if _, err := layout.FromPath(s.layoutDir()); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if _, err := layout.Write(s.layoutDir(), empty.Index); err != nil {
			return nil, fmt.Errorf("image store %s: %w", dir, err)
		}
	}
	return s, nil
}

func (s *Store) layoutDir() string { return filepath.Join(s.dir, "layout") }

// lock takes the store's lock (shared to read, exclusive to write) and
// returns its release.
func (s *Store) lock(exclusive bool) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// Add stores img under ref, replacing what ref named before.
func (s *Store) Add(ref string, img v1.Image) error {
	full, err := Normalize(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	unlock, err := s.lock(true)
	if err != nil {
		return err
	}
	defer unlock()
	p, err := layout.FromPath(s.layoutDir())
	if err != nil {
		return err
	}
	return p.ReplaceImage(img, match.Annotation(refAnnotation, full), layout.WithAnnotations(map[string]string{refAnnotation: full}))
}

// Load adds every image of an archive and returns their references. An
// archive with an OCI image layout (make images, docker save since 25) is
// read as one, keeping each image's manifest and digest; an older docker
// save archive by its manifest.json.
func (s *Store) Load(archive string) ([]string, error) {
	tmp, err := os.MkdirTemp(s.dir, "load-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	f, err := os.Open(archive)
	if err != nil {
		return nil, err
	}
	err = untar(f, tmp)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: not an image archive: %w", archive, err)
	}
	imgs := map[string]v1.Image{}
	if _, err := os.Stat(filepath.Join(tmp, "index.json")); err == nil {
		idx, err := layout.ImageIndexFromPath(tmp)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", archive, err)
		}
		m, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", archive, err)
		}
		for _, d := range m.Manifests {
			ref := d.Annotations["io.containerd.image.name"]
			if ref == "" {
				ref = d.Annotations[refAnnotation]
			}
			if ref == "" {
				continue
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", archive, ref, err)
			}
			imgs[ref] = img
		}
	}
	if len(imgs) == 0 {
		if imgs, err = ReadArchive(archive); err != nil {
			return nil, err
		}
	}
	var refs []string
	for ref, img := range imgs {
		if err := s.Add(ref, img); err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		refs = append(refs, ref)
	}
	sort.Strings(refs)
	return refs, nil
}

// List returns the references the store holds, sorted.
func (s *Store) List() ([]string, error) {
	unlock, err := s.lock(false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := layout.ImageIndexFromPath(s.layoutDir())
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range m.Manifests {
		if r := d.Annotations[refAnnotation]; r != "" {
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Image is a stored image ready to run.
type Image struct {
	Ref    string
	Digest v1.Hash
	Config v1.Config
	// Rootfs is the unpacked root filesystem (read-only: containers get a
	// writable layer over it, or none).
	Rootfs string
}

// ErrNotFound is an image the store does not hold.
var ErrNotFound = errors.New("image not in the store")

// Resolve finds ref (by tag, or by digest for name@sha256:…) and unpacks
// its root filesystem if that was not done before.
func (s *Store) Resolve(ref string) (Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	unlock, err := s.lock(false)
	if err != nil {
		return Image{}, err
	}
	idx, err := layout.ImageIndexFromPath(s.layoutDir())
	if err != nil {
		unlock()
		return Image{}, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		unlock()
		return Image{}, err
	}
	var found *v1.Descriptor
	for i, d := range m.Manifests {
		stored, perr := name.ParseReference(d.Annotations[refAnnotation])
		switch rr := r.(type) {
		case name.Digest:
			if d.Digest.String() == rr.DigestStr() && (perr != nil || stored.Context().Name() == rr.Context().Name()) {
				found = &m.Manifests[i]
			}
		default:
			if perr == nil && stored.Name() == r.Name() {
				found = &m.Manifests[i]
			}
		}
	}
	if found == nil {
		unlock()
		have, _ := s.List()
		return Image{}, fmt.Errorf("%w: %s (the store in %s has %s; make images builds the project's, devcluster load-image adds an archive)",
			ErrNotFound, r.Name(), s.dir, orNone(have))
	}
	img, err := idx.Image(found.Digest)
	if err != nil {
		unlock()
		return Image{}, err
	}
	cf, err := img.ConfigFile()
	unlock()
	if err != nil {
		return Image{}, err
	}
	root, err := s.unpack(found.Digest, img)
	if err != nil {
		return Image{}, err
	}
	return Image{Ref: r.Name(), Digest: found.Digest, Config: cf.Config, Rootfs: root}, nil
}

func orNone(xs []string) string {
	if len(xs) == 0 {
		return "no images"
	}
	return strings.Join(xs, ", ")
}

// unpack writes the image's flattened filesystem to rootfs/<digest> once.
func (s *Store) unpack(d v1.Hash, img v1.Image) (string, error) {
	root := filepath.Join(s.dir, "rootfs", d.Hex)
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.dir), "unpack-")
	if err != nil {
		if err := os.MkdirAll(filepath.Join(s.dir, "rootfs"), 0o755); err != nil {
			return "", err
		}
		if tmp, err = os.MkdirTemp(filepath.Join(s.dir), "unpack-"); err != nil {
			return "", err
		}
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	if err := untar(rc, tmp); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("unpacking %s: %w", d, err)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, "rootfs"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, root); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(root); serr == nil {
			return root, nil // unpacked meanwhile by another
		}
		return "", err
	}
	return root, nil
}

// untar writes a tar stream under dir, refusing entries that would land
// outside it.
func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		clean := filepath.Clean("/" + h.Name)
		target := filepath.Join(dir, clean)
		if clean == "/" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, mode); err != nil {
				return err
			}
			_ = os.Chmod(target, mode)
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			f.Close()
			if err != nil {
				return err
			}
			_ = os.Chmod(target, mode)
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.Clean("/"+h.Linkname))
			if err := os.Link(src, target); err != nil {
				return err
			}
		default:
			// Device nodes and fifos are not in the project's images; the
			// container runtime gives /dev.
			continue
		}
		_ = os.Lchown(target, h.Uid, h.Gid)
	}
}
