package oci

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// WriteArchive writes img under refs as an archive that docker load, kind
// load image-archive (containerd's import) and this project's image store
// all read: an OCI image layout (oci-layout, index.json naming each ref,
// blobs/) plus the manifest.json of docker save, in one tar whose bytes
// depend only on the image and refs.
func WriteArchive(path string, img v1.Image, refs ...string) error {
	dir, err := os.MkdirTemp("", "oci-archive-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	var tags []string
	for _, r := range refs {
		ref, err := name.ParseReference(r)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", r, err)
		}
		tags = append(tags, r)
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": ref.Name(),
			"io.containerd.image.name":          ContainerdName(ref),
		})); err != nil {
			return err
		}
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var layerPaths []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		layerPaths = append(layerPaths, "blobs/"+d.Algorithm+"/"+d.Hex)
	}
	dm, err := json.Marshal([]map[string]any{{
		"Config": "blobs/" + cfg.Algorithm + "/" + cfg.Hex, "RepoTags": tags, "Layers": layerPaths,
	}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), dm, 0o644); err != nil {
		return err
	}
	b, err := tarTree(dir, time.Unix(0, 0).UTC())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ContainerdName is ref as containerd and the kubelet name it: Docker Hub
// is "docker.io" (go-containerregistry says "index.docker.io", which
// containerd's import keeps verbatim, so a pod's "purchase-system/x:dev"
// would not find it).
func ContainerdName(ref name.Reference) string {
	if ref.Context().RegistryStr() == name.DefaultRegistry {
		return "docker.io/" + strings.TrimPrefix(ref.Name(), name.DefaultRegistry+"/")
	}
	return ref.Name()
}
