# Purchase Tracking System. The two commands a newcomer needs:
#   make run    the whole system, running, with URLs printed
#   make test   everything CI runs
# Both install what they need (tools are cached per version under
# ${XDG_CACHE_HOME:-~/.cache}/purchase-system) and print progress.

SHELL := /bin/bash
BIN   := $(CURDIR)/bin
PROGRAMS := webserver consumer adapter loadgen devcluster

.PHONY: help build run run-local test bench tools cluster-up cluster-down clean

help:
	@echo "make run        the whole system on a local Kubernetes (no Docker needed), URLs printed"
	@echo "make test       run every test CI runs"
	@echo "make run-local  the two services as host processes beside Kafka, without Kubernetes"
	@echo "make cluster-up / cluster-down   the local Kubernetes alone (kubeconfig: .cache/devcluster/kubeconfig)"
	@echo "make build      build the programs into bin/"
	@echo "make bench      measure /buy and consumer throughput (docs/BENCHMARKS.md)"
	@echo "make tools      fetch and build every tool into the cache"

build:
	@echo "==> building $(PROGRAMS) into bin/"
	@go build -o $(BIN)/ ./webserver/cmd/webserver ./consumer/cmd/consumer ./adapter/cmd/adapter \
		./e2e/cmd/loadgen ./e2e/cmd/devcluster

tools:
	@scripts/tools.sh ensure all

run: build
	@scripts/run.sh

run-local: build
	@scripts/run-local.sh

test: build
	@scripts/test.sh

bench: build
	@scripts/bench.sh

cluster-up: build
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

clean:
	rm -rf $(BIN) .cache
