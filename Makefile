# stickynet — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
OUT := $(CURDIR)/_output
BIN := $(OUT)/bin
CONTROLLER_GEN := $(BIN)/controller-gen
GOLANGCI_LINT := $(BIN)/golangci-lint
GOFUMPT := $(BIN)/gofumpt
# Packages whose tests need nothing but Go (no root, no etcd, no kernel).
TEST_FLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Build

# Where build writes stickynet's binaries, and how it builds them: static
# (no cgo), as the chart copies the CNI plugin onto each node, whose C
# library is not the build machine's, and the image has none of its own.
STICKYNET_BIN ?= $(BIN)
GOBUILD ?= CGO_ENABLED=0 $(GO) build

.PHONY: build
build: ## Build stickynet's binaries into _output/bin: stickynet-webhook, stickynet-extender, stickynet-nodeagent and the CNI plugin stickynet.
	@mkdir -p $(STICKYNET_BIN)
	$(GO) build ./...
	@for d in webhook extender nodeagent; do \
	  $(GOBUILD) -o $(STICKYNET_BIN)/stickynet-$$d ./$$d || exit 1; \
	done
	$(GOBUILD) -o $(STICKYNET_BIN)/stickynet ./cni # named after its CNI type, as the runtime looks it up

# The image's name: make image IMAGE=registry.example/stickynet:v1
IMAGE ?= stickynet.local/stickynet:dev

.PHONY: image
image: ## Write stickynet's container image, $(IMAGE), as a docker-archive tar: _output/stickynet-image.tar (no container engine needed; docker load, ctr images import or skopeo copy docker-archive: read it).
	$(MAKE) build STICKYNET_BIN=$(OUT)/image GOBUILD="CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w'"
	$(GO) run ./e2e/cmd/image -bin $(OUT)/image -name $(IMAGE) -o $(OUT)/stickynet-image.tar

.PHONY: tools
tools: ## Build the pinned third-party binaries the tests run (etcd, Kubernetes, containerd, CNI plugins, pause, helm), cached in ~/.cache/stickynet.
	hack/build-tools.sh etcd kube containerd cniplugins images helm

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Regenerate deepcopy code and CRD manifests from api/.
	$(CONTROLLER_GEN) object paths=./api/...
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=charts/stickynet/crds

$(CONTROLLER_GEN): hack/tools/go.mod
	cd hack/tools && $(GO) build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

$(GOFUMPT): hack/tools/go.mod
	cd hack/tools && $(GO) build -o $@ mvdan.cc/gofumpt

$(GOLANGCI_LINT): hack/lint/go.mod
	cd hack/lint && $(GO) build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (gofumpt, importas, errorlint, revive).
	$(GOLANGCI_LINT) run ./...

.PHONY: fmt
fmt: $(GOFUMPT) ## Format the Go code with gofumpt.
	$(GOFUMPT) -w $$(git ls-files '*.go' | grep -v zz_generated)

##@ Test

.PHONY: test
# One package at a time (-p 1): the suites measure real datapaths (iperf3
# through tbf and OVS meters at up to 300 Mbit/s) and run whole clusters;
# two of them at once on 2 cores starve each other's userspace datapath.
# -timeout is each package's: the slowest takes about 4.5 min here, and a
# hung one must panic (with its goroutines' stacks) well within CI's 90 min
# for the whole run, which 80 min each did not.
test: verify-generate lint test-race ## Lint, the race detector's run, then every test, unit and integration (as root, after `make tools`). CI runs this.
	$(GO) test -count=1 -p 1 -timeout 20m $(TEST_FLAGS) ./...

# The packages whose tests run goroutines against shared state (the
# extender's concurrent requests and caches, the allocator's cache and group
# commit, the store, the release controller's parallel settling): their
# tests say nothing of a data race without the race detector. About 3.5 min
# here, one package at a time (as make test: the etcd ones time things).
RACE_PACKAGES := ./extender/server/ ./extender/state/ ./internal/ipam/ ./internal/store/... ./webhook/release/

.PHONY: test-race
test-race: ## Run the tests of the concurrent packages under the race detector.
	$(GO) test -race -count=1 -p 1 -timeout 20m $(TEST_FLAGS) $(RACE_PACKAGES)

.PHONY: test-unit
test-unit: ## Unit tests only (go test -short: tests that need etcd or root are skipped and say so).
	$(GO) test -short -count=1 $(TEST_FLAGS) ./...

.PHONY: fuzz
fuzz: ## Run the annotation parser fuzzer for 60 s.
	$(GO) test -run '^$$' -fuzz FuzzParsers -fuzztime 60s ./internal/annotations/

.PHONY: verify-generate
verify-generate: generate ## Fail when generated code or CRDs are out of date.
	@git diff --exit-code -- api charts/stickynet/crds && test -z "$$(git status --porcelain -- api charts/stickynet/crds)" || \
		(git status --short -- api charts/stickynet/crds; echo "run 'make generate' and commit the result" >&2; exit 1)

##@ Local cluster

NODES ?= 3
SIM_NODES ?= 0
# STICKYNET=1 also runs stickynet on the cluster; SIM_AGENTS simulated nodes
# run its node agent (each with an Open vSwitch of its own), the others keep
# the reference chain.
STICKYNET ?=
SIM_AGENTS ?= 10
LOCALCLUSTER := $(BIN)/localcluster

.PHONY: localcluster
localcluster:
	@mkdir -p $(BIN)
	$(GO) build -o $(LOCALCLUSTER) ./e2e/cmd/localcluster

.PHONY: cluster-up
cluster-up: localcluster $(if $(STICKYNET),build) ## Start the local cluster as root (NODES=3 real nodes, SIM_NODES=0 simulated; STICKYNET=1 with stickynet; after `make tools`); prints the time to Ready.
	$(LOCALCLUSTER) up --dir $(OUT)/cluster --kubeconfig $(OUT)/kubeconfig --nodes $(NODES) --sim-nodes $(SIM_NODES) \
	  $(if $(STICKYNET),--stickynet --stickynet-bin $(BIN) --sim-agents $(SIM_AGENTS))

.PHONY: cluster-down
cluster-down: localcluster ## Stop the local cluster's supervisor by its PID and remove everything the cluster made.
	$(LOCALCLUSTER) down --dir $(OUT)/cluster

.PHONY: demo
demo: ## As root: the local cluster with stickynet, the README's kubectl session run for real (sticky IP/MAC across a node move, a rate limit with iperf3), then cluster-down (KEEP=1 leaves it up).
	hack/demo/demo.sh

##@ Benchmarks

.PHONY: bench
bench: bench-ipam bench-webhook bench-extender bench-cni ## Run every benchmark.

.PHONY: bench-ipam
bench-ipam: ## Sticky allocations/s and latency at 64 callers vs raw etcd transactions, and cache rebuild time.
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/ipam/

.PHONY: bench-webhook
bench-webhook: ## Pod creations/s through the real API server with the stickynet webhook, a no-op webhook and none; handler p99 at 200/s.
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 40m ./bench/webhook/

##@ Extender

.PHONY: extender
extender: ## Build the scheduler extender into _output/bin/stickynet-extender.
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/stickynet-extender ./extender

.PHONY: test-extender
test-extender: ## Extender tests: unit, fixtures, and (as root, after `make tools`) the real kube-scheduler on a local cluster.
	$(GO) test -count=1 -timeout 20m ./extender/...

.PHONY: fuzz-extender
fuzz-extender: ## Fuzz the extender's request decoding against encoding/json for 60 s.
	$(GO) test -run '^$$' -fuzz FuzzDecodeArgs -fuzztime 60s ./extender/server/

.PHONY: bench-extender
bench-extender: ## Extender filter+prioritize p50/p99 at 5,000 nodes (in process, HTTP); kube-scheduler pods/s on 1,000 nodes with stickynet, no-op and no extender (as root).
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 60m ./bench/extender/

##@ Node

.PHONY: nodeagent
nodeagent: ## Build the node agent and the CNI plugin into _output/bin (stickynet-nodeagent, stickynet).
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/stickynet-nodeagent ./nodeagent
	$(GO) build -o $(BIN)/stickynet ./cni

.PHONY: test-node
test-node: ## Node agent and CNI tests: unit, and (as root) real OVS, netns, qdiscs and iperf3 bandwidth runs.
	$(GO) test -count=1 -timeout 30m ./cni/... ./nodeagent/...

.PHONY: bench-cni
bench-cni: ## CNI ADD/DEL p50/p99 over 200 pods, stickynet vs bridge+host-local+bandwidth, and agent RSS (as root, after `make tools`).
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/cni/
