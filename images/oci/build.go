// Package oci builds the project's container images without a Docker
// engine and keeps the store the local node runs them from. An image is a
// directory laid out as its root filesystem (a static binary, CA
// certificates, passwd and group for a non-root user) packed into one
// layer reproducibly: the same directory and settings always give the same
// digest (fixed timestamps and owners, sorted entries, no host names).
package oci

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Spec describes one image.
type Spec struct {
	// Root is a directory whose tree becomes the image's filesystem.
	Root       string
	Entrypoint []string
	Cmd        []string
	User       string // uid:gid, e.g. 65532:65532
	WorkingDir string
	Env        []string
	// ExposedPorts like "8080/tcp".
	ExposedPorts []string
	// Labels: the OCI annotations of source, revision, version.
	Labels map[string]string
	// Created is the image's creation time and every file's mtime: a fixed
	// time (SOURCE_DATE_EPOCH, the commit's time) makes builds
	// reproducible.
	Created time.Time
	// Layers, when set instead of Root, are tar files taken as the
	// image's layers as they are, owners, modes and links included (an
	// operating system's root, as the kind node image has: setuid
	// programs, files of other users, hard links).
	Layers []string
	// StopSignal is the signal that stops the image's process (systemd
	// as PID 1 takes SIGRTMIN+3).
	StopSignal string
}

// Build packs the spec into an OCI image.
func Build(s Spec) (v1.Image, error) {
	var layers []v1.Layer
	if len(s.Layers) > 0 {
		for _, f := range s.Layers {
			l, err := tarball.LayerFromFile(f, tarball.WithMediaType(types.OCILayer))
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", f, err)
			}
			layers = append(layers, l)
		}
	} else {
		layerTar, err := tarTree(s.Root, s.Created)
		if err != nil {
			return nil, err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(layerTar)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   l,
			History: v1.History{CreatedBy: "purchase-system images (scripts/images.sh)", Created: v1.Time{Time: s.Created}},
		})
		if err != nil {
			return nil, err
		}
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: s.Created}
	cf.Config.Entrypoint, cf.Config.Cmd = s.Entrypoint, s.Cmd
	cf.Config.User, cf.Config.WorkingDir, cf.Config.Env = s.User, s.WorkingDir, s.Env
	cf.Config.Labels = s.Labels
	cf.Config.StopSignal = s.StopSignal
	if len(s.ExposedPorts) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range s.ExposedPorts {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, s.Labels).(v1.Image), nil
}

// tarTree writes the tree under root as a tar, entries sorted, every entry
// owned by root with mtime at, permissions as on disk.
func tarTree(root string, at time.Time) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(root, p)
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return nil, err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return nil, err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Mode = normalMode(fi)
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.ModTime, h.AccessTime, h.ChangeTime = at, time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		h.PAXRecords = nil
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Describe is a one-line summary of an image, for logs.
func Describe(img v1.Image) string {
	d, err := img.Digest()
	if err != nil {
		return "?"
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return d.String()
	}
	return fmt.Sprintf("%s user %s entrypoint %s", d, cf.Config.User, strings.Join(cf.Config.Entrypoint, " "))
}

// normalMode is the mode a file gets in the image, whatever the umask of
// the checkout or the build left on disk: directories 0755 (1777 where the
// sticky bit was set, as for /tmp), executables 0755, other files 0644,
// symlinks 0777. Two clones built under different umasks give one digest.
func normalMode(fi fs.FileInfo) int64 {
	m := fi.Mode()
	switch {
	case m&fs.ModeSymlink != 0:
		return 0o777
	case m.IsDir() && m&fs.ModeSticky != 0:
		return 0o1777
	case m.IsDir():
		return 0o755
	case m.Perm()&0o111 != 0:
		return 0o755
	default:
		return 0o644
	}
}
