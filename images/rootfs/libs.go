// Package rootfs checks an image's root filesystem before it is packed:
// that every shared library a program of the image loads is in the image.
// Images of third-party parts are unpacked from Debian packages chosen by
// hand (images/debian/*.lock, without the packages' maintainer scripts), so
// a package left out shows here, at build time, and not as a container
// that exits at its first start.
package rootfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// The dynamic loader's default directories on Debian amd64, after the
// object's own RUNPATH.
var defaultDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// Missing is a library an object needs that the root does not have.
type Missing struct {
	Library string // the soname, e.g. libicuuc.so.72
	Object  string // the object that needs it, as a path in the image
}

func (m Missing) String() string { return m.Library + " (needed by " + m.Object + ")" }

// MissingLibraries follows the DT_NEEDED entries of each program (paths in
// the image, in the order a process loads them) and of every library they
// load, as the dynamic loader would find them under root, and returns those
// not found. Statically linked programs need nothing.
func MissingLibraries(root string, programs []string) ([]Missing, error) {
	c := checker{root: root, seen: map[string]bool{}, loaded: map[string]bool{}, missing: map[string]string{}}
	for _, p := range programs {
		if err := c.visit(p); err != nil {
			return nil, err
		}
	}
	out := make([]Missing, 0, len(c.missing))
	for lib, obj := range c.missing {
		out = append(out, Missing{Library: lib, Object: obj})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Library < out[j].Library })
	return out, nil
}

type checker struct {
	root    string
	seen    map[string]bool   // objects visited, by path in the image
	loaded  map[string]bool   // their sonames: a later object's need of one is met
	missing map[string]string // soname → the first object that needs it
}

func (c *checker) visit(obj string) error {
	real, err := c.resolve(obj)
	if err != nil {
		return fmt.Errorf("%s: %w", obj, err)
	}
	if c.seen[real] {
		return nil
	}
	c.seen[real] = true
	f, err := elf.Open(filepath.Join(c.root, real))
	if err != nil {
		return fmt.Errorf("%s: %w", obj, err)
	}
	defer f.Close()
	needed, err := f.DynString(elf.DT_NEEDED)
	if err != nil {
		return fmt.Errorf("%s: %w", obj, err)
	}
	// The loader meets a need by an object already loaded under that
	// soname (the JVM's libraries need libjvm.so, which java loads from a
	// directory on no search path before it opens them).
	sonames, _ := f.DynString(elf.DT_SONAME)
	for _, so := range sonames {
		c.loaded[so] = true
	}
	var dirs []string
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		paths, _ := f.DynString(tag)
		for _, p := range paths {
			for _, d := range strings.Split(p, ":") {
				dirs = append(dirs, strings.ReplaceAll(d, "$ORIGIN", path.Dir(real)))
			}
		}
	}
	dirs = append(dirs, defaultDirs...)
	for _, lib := range needed {
		if c.loaded[lib] {
			continue
		}
		found := ""
		for _, d := range dirs {
			p := path.Join(d, lib)
			if _, err := c.resolve(p); err == nil {
				found = p
				break
			}
		}
		if found == "" {
			if _, ok := c.missing[lib]; !ok {
				c.missing[lib] = obj
			}
			continue
		}
		if err := c.visit(found); err != nil {
			return err
		}
	}
	return nil
}

// resolve follows symlinks, in every component of p, the way the image
// will see them: absolute targets are read from the image's root, never
// from the build machine's.
func (c *checker) resolve(p string) (string, error) {
	rest := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	done := "/"
	for hops := 0; len(rest) > 0; {
		name := rest[0]
		rest = rest[1:]
		next := path.Join(done, name)
		fi, err := os.Lstat(filepath.Join(c.root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = next
			continue
		}
		if hops++; hops > 40 {
			return "", errors.New("too many levels of symbolic links")
		}
		target, err := os.Readlink(filepath.Join(c.root, next))
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			done = "/"
		}
		rest = append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), rest...)
	}
	return done, nil
}
