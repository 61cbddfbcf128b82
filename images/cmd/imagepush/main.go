// Command imagepush pushes image archives (make images writes them) to a
// registry, byte for byte, and prints each image's digest.
//
//	imagepush --into ghcr.io/acme _output/images/webserver.tar ...
//	    every image as ghcr.io/acme/<name>:<tag> (make push REGISTRY=ghcr.io/acme)
//	imagepush --mirror 127.0.0.1:5000 --tls-dir .cache/devcluster/pki/registry --pins manifests/generated/images/kustomization.yaml _output/images
//	    every image under its own repository path on a mirror, and a kustomize
//	    Component that pins each by digest
//
// A directory stands for every *.tar in it. Credentials are Docker's
// (~/.docker/config.json), as docker push and crane use them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/purchase-system/purchase-system/images/oci"
)

func main() {
	into := flag.String("into", "", "push every image as PREFIX/<name>:<tag> (PREFIX is host/org)")
	mirror := flag.String("mirror", "", "push every image under its own repository path on this host")
	pins := flag.String("pins", "", "write a kustomize Component pinning every pushed image by digest")
	tlsDir := flag.String("tls-dir", "", "a registry that asks for a client certificate (the local cluster's: .cache/devcluster/pki/registry): DIR/ca.crt, DIR/client.crt, DIR/client.key")
	flag.Parse()
	if (*into == "") == (*mirror == "") || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "imagepush: exactly one of --into and --mirror, and at least one archive or directory")
		flag.Usage()
		os.Exit(2)
	}
	rename := oci.Into(*into)
	if *mirror != "" {
		rename = oci.Mirror(*mirror)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	if *tlsDir != "" {
		t, err := oci.ClientTLS(filepath.Join(*tlsDir, "ca.crt"), filepath.Join(*tlsDir, "client.crt"), filepath.Join(*tlsDir, "client.key"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "imagepush: --tls-dir:", err)
			os.Exit(2)
		}
		opts = append(opts, t)
	}
	pushed, err := oci.PushArchives(ctx, oci.Archives(flag.Args()...), rename, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagepush:", err)
		os.Exit(1)
	}
	for _, p := range pushed {
		fmt.Printf("%s  %s\n", p.Pinned(), p.Source)
	}
	if *pins != "" {
		if err := oci.WritePins(*pins, pushed, *mirror != ""); err != nil {
			fmt.Fprintln(os.Stderr, "imagepush: --pins:", err)
			os.Exit(1)
		}
	}
}
