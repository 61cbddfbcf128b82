# Purchase Tracking System. The two commands a newcomer needs:
#   make run    the whole system, running, with URLs printed
#   make test   everything CI runs
# Both install what they need (tools are cached per version under
# ${XDG_CACHE_HOME:-~/.cache}/purchase-system) and print progress.

SHELL := /bin/bash
BIN   := $(CURDIR)/bin
PROGRAMS := webserver consumer adapter loadgen devcluster runc-bounded imagebuild imagepush

.PHONY: help build images push run run-local test e2e e2e-kind load bench bench-lag bench-hpa bench-pods tools cluster-up cluster-down clean

help:
	@echo "make run        the whole system on a local Kubernetes (no Docker needed), URLs printed"
	@echo "                (WITH=keda: KEDA behind the adapter, scaling a copy of the consumer beside it)"
	@echo "make test       run every test CI runs"
	@echo "make load       with make run going: load that makes the system scale, HPAs printed live (RATE=, DURATION=)"
	@echo "make e2e        the end-to-end autoscaling scenario on the local Kubernetes (timeline in _output/e2e/)"
	@echo "make e2e-kind   the same scenario on kind, with Docker (docs/kind.md)"
	@echo "make run-local  the two services as host processes beside Kafka, without Kubernetes"
	@echo "make cluster-up / cluster-down   the local Kubernetes alone (kubeconfig: .cache/devcluster/kubeconfig)"
	@echo "make build      build the programs into bin/"
	@echo "make images     container images into _output/images/ (no Docker needed)"
	@echo "make push REGISTRY=<host>/<org>   push the images for a real cluster, digests printed"
	@echo "make bench      measure /buy and consumer throughput (docs/BENCHMARKS.md)"
	@echo "make bench-lag  measure the lag source with 3,000 consumer groups (docs/BENCHMARKS.md)"
	@echo "make bench-hpa  measure 1,000 HPAs through the real HPA controller (docs/BENCHMARKS.md)"
	@echo "make bench-pods measure one selector over 10 to 10,000 pods (docs/BENCHMARKS.md)"
	@echo "make tools      fetch and build every tool into the cache"

build:
	@echo "==> building $(PROGRAMS) into bin/"
	@go build -o $(BIN)/ ./webserver/cmd/webserver ./consumer/cmd/consumer ./adapter/cmd/adapter \
		./e2e/cmd/loadgen ./devcluster/cmd/devcluster ./devcluster/cmd/runc-bounded ./images/cmd/imagebuild ./images/cmd/imagepush

# Container images without Docker: _output/images/*.tar (OCI archives that
# docker load and kind load image-archive take) and the local node's store.
images: build
	@scripts/images.sh build

# The project's images into a registry for a real cluster (make push
# REGISTRY=ghcr.io/acme): byte for byte, digests printed, and a kustomize
# Component pinning them written to _output/push/ for an overlay to include.
push: images
	@[ -n "$(REGISTRY)" ] || { echo "usage: make push REGISTRY=<host>/<org>  (credentials: ~/.docker/config.json)"; exit 2; }
	@bin/imagepush --into $(REGISTRY) --pins _output/push/kustomization.yaml \
		_output/images/webserver.tar _output/images/consumer.tar _output/images/adapter.tar

tools:
	@scripts/tools.sh ensure all

run: build
	@scripts/run.sh

# The seed's load test, open loop at a rate that makes the web server scale.
RATE ?= 350
DURATION ?= 5m
KUBECONFIG_FILE ?= .cache/devcluster/kubeconfig
load: build
	@bin/loadgen -url http://localhost:30080/buy -arrival-rate $(RATE) -d $(DURATION) -watch $(KUBECONFIG_FILE)

e2e: build
	@scripts/e2e.sh

# The scenario on kind, for people with Docker (a dockerd of this
# checkout's own when none runs), from a node image built here.
e2e-kind: build
	@e2e/kind/run.sh

run-local: build
	@scripts/run-local.sh

test: build
	@scripts/test.sh

bench: build
	@scripts/bench.sh

# The lag source at cluster scale: 3,000 consumer groups, 10,000 partitions.
bench-lag:
	@scripts/bench-lag.sh

# 1,000 HPAs through the real HPA controller, on this adapter and on
# prometheus-adapter (the local Kubernetes; about 20 minutes).
bench-hpa: build
	@cd e2e && go test -run '^$$' -bench ThousandHPAs -benchtime 1x -timeout 60m ./clustertest/

# One HPA's selector matching 10, 100, 1,000 and 10,000 pods (the local
# Kubernetes; about 3 minutes).
bench-pods: build
	@cd e2e && go test -run '^$$' -bench PodsPerSelector -benchtime 1x -timeout 40m ./clustertest/

cluster-up: build
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

clean:
	rm -rf $(BIN) .cache
