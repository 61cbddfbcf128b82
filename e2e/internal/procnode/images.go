package procnode

import (
	"fmt"
	"sort"
	"strings"
)

// Images maps a container image repository (the image name without tag or
// digest) to the program of this machine that stands in for it: the node
// has no container runtime, it runs the project's own binaries.
type Images map[string]string

// Set parses "repository=/path/to/binary", for a repeatable flag.
func (im Images) Set(v string) error {
	repo, path, ok := strings.Cut(v, "=")
	if !ok || repo == "" || path == "" {
		return fmt.Errorf("image mapping %q is not repository=/path/to/binary", v)
	}
	im[repository(repo)] = path
	return nil
}

func (im Images) String() string {
	var out []string
	for k, v := range im {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// Resolve returns the binary for image, or an error that lists the images
// this node can run.
func (im Images) Resolve(image string) (string, error) {
	if p, ok := im[repository(image)]; ok {
		return p, nil
	}
	known := make([]string, 0, len(im))
	for k := range im {
		known = append(known, k)
	}
	sort.Strings(known)
	return "", fmt.Errorf("image %q is not a program this node can run (it runs processes, not containers; known images: %s)", image, strings.Join(known, ", "))
}

// repository strips the tag and digest: "purchase-system/webserver:dev"
// becomes "purchase-system/webserver". A docker.io prefix is dropped so
// both spellings match.
func repository(image string) string {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndexByte(image, ':'); i > strings.LastIndexByte(image, '/') {
		image = image[:i]
	}
	image = strings.TrimPrefix(image, "docker.io/")
	return strings.TrimPrefix(image, "library/")
}
