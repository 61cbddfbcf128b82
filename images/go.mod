// Container images of the project, built without a Docker engine: each a
// static binary and a few files on an empty base, packed reproducibly into
// OCI archives; and the image store the local Kubernetes node runs
// containers from.
module github.com/purchase-system/purchase-system/images

go 1.26.0

require (
	github.com/google/go-containerregistry v0.22.1
	github.com/purchase-system/purchase-system/testkit v0.0.0
)

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	golang.org/x/sync v0.22.0 // indirect
)
