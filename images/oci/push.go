package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Pushed is one image a push wrote: what the archive called it, where it
// went, and its digest (the archive's own: the manifest is pushed byte
// for byte).
type Pushed struct {
	// Name is the image's repository as manifests write it
	// (purchase-system/webserver, registry.k8s.io/pause): what a pin
	// replaces.
	Name   string
	Source string // the archive's full name for it: docker.io/purchase-system/webserver:dev
	Target name.Tag
	Digest v1.Hash
}

// Pinned is the target by digest: what a manifest names to pull exactly
// this image.
func (p Pushed) Pinned() string { return p.Target.Context().Name() + "@" + p.Digest.String() }

// Rename says where an archive's image goes.
type Rename func(name.Reference) (name.Tag, error)

// Mirror keeps every image's repository path on another host: what
// containerd's mirror for every registry (certs.d/_default) asks that host
// for. registry.k8s.io/pause:3.10.2 becomes HOST/pause:3.10.2 and
// purchase-system/webserver:dev (Docker Hub's) HOST/purchase-system/webserver:dev.
func Mirror(host string) Rename {
	return func(ref name.Reference) (name.Tag, error) {
		return name.NewTag(host+"/"+ref.Context().RepositoryStr()+":"+tagOf(ref), options(host)...)
	}
}

// Into puts every image under PREFIX (host/org) by the last element of its
// path: purchase-system/webserver:v1 becomes PREFIX/webserver:v1 (make
// push REGISTRY=PREFIX).
func Into(prefix string) Rename {
	prefix = strings.TrimSuffix(prefix, "/")
	host, _, _ := strings.Cut(prefix, "/")
	return func(ref name.Reference) (name.Tag, error) {
		return name.NewTag(prefix+"/"+path.Base(ref.Context().RepositoryStr())+":"+tagOf(ref), options(host)...)
	}
}

func tagOf(ref name.Reference) string {
	if t, ok := ref.(name.Tag); ok {
		return t.TagStr()
	}
	return "latest"
}

// options: a registry on this machine speaks plain HTTP, as kind's local
// registry does; any other gets HTTPS.
func options(host string) []name.Option {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" || net.ParseIP(h).IsLoopback() {
		return []name.Option{name.Insecure}
	}
	return nil
}

// PushArchive pushes every tagged image of an archive WriteArchive wrote
// (its OCI layout, so the digest is the archive's) to where rename says.
func PushArchive(ctx context.Context, archive string, rename Rename, opts ...remote.Option) ([]Pushed, error) {
	dir, err := os.MkdirTemp("", "oci-push-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := untar(archive, dir); err != nil {
		return nil, fmt.Errorf("%s: %w", archive, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: not an OCI image archive (make images writes them): %w", archive, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", archive, err)
	}
	var out []Pushed
	for _, d := range im.Manifests {
		ref := d.Annotations["org.opencontainers.image.ref.name"]
		if ref == "" {
			continue
		}
		src, err := name.ParseReference(ref)
		if err != nil {
			return nil, fmt.Errorf("%s: image %q: %w", archive, ref, err)
		}
		target, err := rename(src)
		if err != nil {
			return nil, fmt.Errorf("%s: image %s: %w", archive, ref, err)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("%s: image %s: %w", archive, ref, err)
		}
		if err := remote.Write(target, img, append([]remote.Option{remote.WithContext(ctx)}, opts...)...); err != nil {
			return nil, fmt.Errorf("pushing %s to %s: %w", ref, target, err)
		}
		out = append(out, Pushed{Name: familiar(src), Source: ContainerdName(src), Target: target, Digest: d.Digest})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no tagged image in it", archive)
	}
	return out, nil
}

// untar unpacks an archive of regular files and directories into dir,
// refusing anything that would land outside it.
func untar(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			w, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("entry %s: type %c is not part of an image archive", h.Name, h.Typeflag)
		}
	}
}

// familiar is a reference's repository as people write it: Docker Hub's
// without its host.
func familiar(ref name.Reference) string {
	if ref.Context().RegistryStr() == name.DefaultRegistry {
		return strings.TrimPrefix(ref.Context().RepositoryStr(), "library/")
	}
	return ref.Context().Name()
}

// WritePins writes a kustomize Component that pins every pushed image by
// digest (images: name → newName@digest). On the local cluster newName is
// the image's own name: containerd's mirror fetches it from the local
// registry, by digest, as a real cluster fetches from its registry.
func WritePins(file string, pushed []Pushed, keepName bool) error {
	var b strings.Builder
	b.WriteString("# Written by the image push (scripts/cluster.sh up, make push): every image\n")
	b.WriteString("# by the digest the registry holds. Not committed.\n")
	b.WriteString("apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nimages:\n")
	seen := map[string]bool{}
	for _, p := range pushed {
		if seen[p.Name] {
			continue // one image under two tags: one digest
		}
		seen[p.Name] = true
		newName := p.Target.Context().Name()
		if keepName {
			newName = p.Name
		}
		fmt.Fprintf(&b, "  - name: %s\n    newName: %s\n    digest: %s\n", p.Name, newName, p.Digest)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// PushArchives pushes every archive, in order.
func PushArchives(ctx context.Context, archives []string, rename Rename, opts ...remote.Option) ([]Pushed, error) {
	var all []Pushed
	for _, a := range archives {
		p, err := PushArchive(ctx, a, rename, opts...)
		if err != nil {
			return all, err
		}
		all = append(all, p...)
	}
	return all, nil
}

// Archives expands directories into the *.tar files in them.
func Archives(paths ...string) []string {
	var out []string
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			m, _ := filepath.Glob(filepath.Join(p, "*.tar"))
			out = append(out, m...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// PinText rewrites every "image: NAME[:TAG]" line of a manifest whose
// NAME a push wrote into "image: NAME@DIGEST": for images named where
// kustomize's image pins do not reach (a pod template inside a ConfigMap,
// as the storage provisioner's helper is).
func PinText(text string, pushed []Pushed) string {
	digests := map[string]string{}
	for _, p := range pushed {
		digests[p.Name] = p.Digest.String()
	}
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		indent, rest, ok := strings.Cut(l, "image:")
		if !ok || strings.TrimSpace(indent) != "" && strings.TrimSpace(indent) != "-" {
			continue
		}
		ref := strings.Trim(strings.TrimSpace(rest), `"'`)
		if strings.Contains(ref, "@") {
			continue
		}
		repo := ref
		if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
			repo = ref[:i]
		}
		if d, ok := digests[repo]; ok {
			lines[i] = indent + "image: " + repo + "@" + d
		}
	}
	return strings.Join(lines, "\n")
}
