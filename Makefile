# gpulet's build. `make demo` runs gpulet on a simulated DGX H100; `make test`
# runs every test, vet and lint, installing the pinned tools it needs into
# .cache/ (git-ignored).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO        ?= go
export CGO_ENABLED := 1
export CGO_CFLAGS  := -Wno-deprecated-declarations

CACHE     := $(CURDIR)/.cache
TOOLS     := $(CACHE)/tools
GOLANGCI_LINT_VERSION := v2.15.0
BENCHSTAT_VERSION     := v0.0.0-20260908200009-22c9c6c9d4da
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)
BENCHSTAT     := $(TOOLS)/benchstat-$(BENCHSTAT_VERSION)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# Fuzz targets run by `make test` for a short fixed time each: package:target.
FUZZ_TARGETS := \
	./internal/nvml/gpusim:FuzzParse \
	./api/config/v1:FuzzParse \
	./api/gpu/v1alpha1:FuzzDecode \
	./internal/cdi:FuzzClaimSpecPath \
	./internal/dra:FuzzOpaqueConfig
FUZZ_TIME ?= 10s

DEMO_DIR ?= $(CURDIR)/.demo

E2E_DIR := tests/e2e
E2E_TIMEOUT ?= 45m

.PHONY: all build test unit vet lint fuzz bench idle-cost demo e2e e2e-bins e2e-vet clean tools

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/gpulet ./cmd/gpulet

## test: everything CI runs: vet, lint, unit tests with -race, short fuzzing,
## and the end-to-end tests against real Kubernetes components.
test: vet lint unit fuzz e2e

unit:
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...
	cd $(E2E_DIR) && $(GO) vet ./...

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run --allow-parallel-runners ./...
	cd $(E2E_DIR) && $(GOLANGCI_LINT) run --allow-parallel-runners ./...

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		if [ -d "$$pkg" ] && grep -rqs "func $$name(" $$pkg/*_test.go; then \
			echo "fuzz $$pkg $$name for $(FUZZ_TIME)"; \
			$(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZ_TIME) $$pkg; \
		fi; \
	done

## bench: every Go benchmark, printed through benchstat.
bench: $(BENCHSTAT)
	@mkdir -p $(CACHE)
	$(GO) test -run='^$$' -bench=. -benchmem -count=5 ./... | tee $(CACHE)/bench.txt
	$(BENCHSTAT) $(CACHE)/bench.txt

## idle-cost: what gpulet costs a node at rest: CPU and RSS of `gpulet serve`
## on a simulated DGX H100 over 60s (the metrics package's TestIdleCost*).
idle-cost:
	$(GO) test -count=1 -run '^TestIdleCost' -v ./internal/metrics -idle-cost 60s

## demo: run gpulet on a simulated DGX H100 with local state, CDI and kubelet dirs.
demo: build
	@mkdir -p $(DEMO_DIR)/state $(DEMO_DIR)/cdi $(DEMO_DIR)/kubelet/device-plugins $(DEMO_DIR)/kubelet/plugins_registry
	@echo "gpulet demo: a simulated DGX H100 (8 GPUs). Files are under $(DEMO_DIR):"
	@echo "  state file to edit (inject faults): $(DEMO_DIR)/state/mock/dgx-h100.yaml"
	@echo "  CDI specs:                          $(DEMO_DIR)/cdi"
	@echo "  device plugin sockets:              $(DEMO_DIR)/kubelet/device-plugins"
	@echo "  metrics:                            http://127.0.0.1:9402/metrics"
	@echo "Stop with Ctrl-C."
	./bin/gpulet serve --nvml mock:dgx-h100 --node-name demo-node \
		--state-dir $(DEMO_DIR)/state --cdi-root $(DEMO_DIR)/cdi \
		--kubelet-root $(DEMO_DIR)/kubelet --metrics-address 127.0.0.1:9402

## e2e-bins: build (once per pinned version) the Kubernetes, etcd and Helm
## binaries the end-to-end tests run, into .cache/e2e.
e2e-bins:
	cd $(E2E_DIR) && $(GO) run ./cmd/buildbins && $(GO) run ./cmd/buildhelm

## e2e: the end-to-end tests (as root: the kubelet needs mounts): a real
## control plane and kubelet driving bin/gpulet.
e2e: build e2e-bins
	cd $(E2E_DIR) && GPULET_BIN=$(CURDIR)/bin/gpulet $(GO) test -race -count=1 -timeout $(E2E_TIMEOUT) ./...

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS)/golangci-lint $@

$(BENCHSTAT):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) CGO_ENABLED=0 $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)
	mv $(TOOLS)/benchstat $@

tools: $(GOLANGCI_LINT) $(BENCHSTAT)

clean:
	rm -rf bin $(DEMO_DIR)
