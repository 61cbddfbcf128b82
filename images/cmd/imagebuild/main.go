// Command imagebuild packs a directory laid out as a root filesystem into
// a container image and writes it as an archive (OCI layout plus docker
// save's manifest.json) under one or more tags. scripts/images.sh lays out
// the directories and calls it; the same inputs give the same digest.
//
//	imagebuild --root DIR --tag purchase-system/webserver:dev --entrypoint /usr/local/bin/webserver \
//	    --user 65532:65532 --port 8080/tcp --label org.opencontainers.image.version=v1 --out webserver.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/purchase-system/purchase-system/images/oci"
	"github.com/purchase-system/purchase-system/images/rootfs"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var s oci.Spec
	var tags, entrypoint, ports, labels, env, programs, layers list
	var out, created string
	flag.StringVar(&s.Root, "root", "", "directory laid out as the image's root filesystem")
	flag.Var(&tags, "tag", "image reference to write the image under (repeatable)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable, in order)")
	flag.StringVar(&s.User, "user", "65532:65532", "uid:gid the image runs as")
	flag.StringVar(&s.WorkingDir, "workdir", "/", "working directory")
	flag.Var(&env, "env", "NAME=value (repeatable)")
	flag.Var(&ports, "port", "exposed port, e.g. 8080/tcp (repeatable)")
	flag.Var(&labels, "label", "key=value label and annotation (repeatable)")
	flag.StringVar(&created, "created", "0", "creation time and every file's mtime, in Unix seconds (SOURCE_DATE_EPOCH)")
	flag.StringVar(&out, "out", "", "archive to write")
	flag.Var(&layers, "layer", "a tar file taken as a layer as it is, owners and modes included, instead of --root (repeatable, bottom first)")
	flag.StringVar(&s.StopSignal, "stop-signal", "", "the signal that stops the image's process (default SIGTERM)")
	flag.Var(&programs, "program", "a dynamically linked program of the image (path in the image) whose shared libraries must all be in it (repeatable)")
	flag.Parse()
	s.Layers = layers
	if (s.Root == "") == (len(layers) == 0) || out == "" || len(tags) == 0 || len(entrypoint) == 0 {
		fmt.Fprintln(os.Stderr, "imagebuild: --out, --tag, --entrypoint and one of --root and --layer are required")
		flag.Usage()
		os.Exit(2)
	}
	sec, err := strconv.ParseInt(created, 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild: --created:", err)
		os.Exit(2)
	}
	s.Created = time.Unix(sec, 0).UTC()
	s.Entrypoint, s.ExposedPorts, s.Env = entrypoint, ports, env
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		s.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
	}
	s.Labels = map[string]string{}
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "imagebuild: --label %q is not key=value\n", kv)
			os.Exit(2)
		}
		s.Labels[k] = v
	}
	if len(programs) > 0 {
		missing, err := rootfs.MissingLibraries(s.Root, programs)
		if err != nil {
			fmt.Fprintln(os.Stderr, "imagebuild: --program:", err)
			os.Exit(1)
		}
		if len(missing) > 0 {
			fmt.Fprintf(os.Stderr, "imagebuild: %s: libraries missing from the image (add the packages that hold them):\n", tags[0])
			for _, m := range missing {
				fmt.Fprintln(os.Stderr, "  "+m.String())
			}
			os.Exit(1)
		}
	}
	img, err := oci.Build(s)
	if err == nil {
		err = oci.WriteArchive(out, img, tags...)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
	d, _ := img.Digest()
	fmt.Printf("%s %s %s\n", out, d, strings.Join(tags, " "))
}
