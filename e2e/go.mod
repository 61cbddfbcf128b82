// End-to-end tests, load commands and the local dev cluster.
module github.com/purchase-system/purchase-system/e2e

go 1.26.0

require (
	github.com/twmb/franz-go v1.22.3
	github.com/twmb/franz-go/pkg/kfake v0.0.0-20260918054303-01f206a7e32c
)

require (
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.12.0 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
	github.com/twmb/franz-go/pkg/kmsg v1.15.1 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/text v0.42.0 // indirect
)

require github.com/purchase-system/purchase-system/consumer v0.0.0

// Built from this repository; the replaces let the module build on its
// own (GOWORK=off) as well as in the workspace.
replace (
	github.com/purchase-system/purchase-system/consumer => ../consumer
	github.com/purchase-system/purchase-system/servicekit => ../servicekit
)
