# ingress-acme: `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
IMAGE    ?= ingress-acme:$(VERSION)
BIN      := bin/ingress-acme
UNIT_PKGS := . ./core/... ./acme/... ./secrets/... ./solver/... ./watcher/... ./metrics/... ./internal/...
# Fuzz targets run briefly in `make test`; `make fuzz FUZZTIME=5m` runs them longer.
FUZZTIME ?= 5s
FUZZ_TARGETS := watcher/ingress:FuzzParseOptions watcher/ingress:FuzzValidateHost solver/ingress:FuzzJournal solver:FuzzChallengeServer
E2E_TIMEOUT ?= 40m
# `make soak`: SEED picks the schedule (a new one each run unless given; a
# failing seed replays the same schedule), DURATION how long it runs.
SEED     ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
DURATION ?= 5m

.PHONY: help build test unit fuzz e2e soak demo bench lint image tools clean-tools clean check-image-build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/ingress-acme (static, version from git)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) .

tools: ## install the testbed's pinned tools into the cache (hack/tools.sh dir)
	hack/tools.sh

clean-tools: ## remove the tools cache
	hack/tools.sh clean

lint: ## gofmt, go vet
	@out=$$(gofmt -l . | grep -v '^vendor/' || true); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit: ## unit tests with -race
	$(GO) test -race -count=1 $(UNIT_PKGS)

fuzz: ## run every fuzz target for FUZZTIME
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg/ ; done

e2e: tools ## end-to-end tests on the local testbed (etcd, kube-apiserver, Pebble, Traefik)
	$(GO) test -count=1 -timeout $(E2E_TIMEOUT) ./e2e/

soak: tools ## the randomized life-of-a-cluster soak alone on the testbed (SEED=n DURATION=5m)
	SOAK_SEED=$(SEED) SOAK_DURATION=$(DURATION) SOAK_EXCLUSIVE=1 $(GO) test -count=1 -v -timeout 0 -run '^TestSoak$$' ./e2e/

test: tools lint unit fuzz check-image-build e2e ## everything: lint, unit (-race), fuzz (briefly), image build check, e2e

demo: tools ## bring up the testbed, run the controller, issue a certificate for a sample Ingress
	$(GO) run ./e2e/cmd/demo

bench: tools ## measure on the testbed (ONLY=latency,memory,thousand,restart10k,kills,unreachable,shortlived,image picks scenarios; all by default)
	$(GO) run ./e2e/cmd/bench $(if $(ONLY),-only=$(ONLY))

image: ## build the container image IMAGE (docker if it works, else buildah offline: make tools installs it)
	VERSION=$(VERSION) hack/image.sh $(IMAGE)

check-image-build: ## assemble the image's files with the Dockerfile's own script; check the binary is make build's, static, versioned
	hack/check-image-build.sh

clean: ## remove build output
	rm -rf bin
