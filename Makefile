# Tether: a containerd runtime v2 shim.
#
#   make build      build the shim into ./bin
#   make test       install missing deps, then unit tests and end-to-end tests
#   make test-unit  unit tests of the root module (go test -race)
#   make test-e2e   end-to-end tests (test/e2e, a separate module; needs root)
#   make demo       run a container through Tether under a private containerd
#   make lint       gofmt and go vet, in every module
#
# The e2e tests take TETHER_E2E_VERSIONS (e.g. 1.6,2.4.2), TETHER_E2E_RUNTIME
# (e.g. io.containerd.runc.v2 to check the harness with containerd's own shim)
# and TETHER_SHIM_BIN (a prebuilt shim); see test/e2e/README.md.

SHELL := /bin/bash
GO ?= go
BIN := bin/containerd-shim-tether-v2
E2E_TIMEOUT ?= 75m

.PHONY: all build test test-unit test-e2e deps demo lint clean bench test-vm test-vm-full vm-thp

all: build

# Static and without cgo: no ld.so or libc pages in every shim (docs/performance.md).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/containerd-shim-tether-v2

# deps installs what the tests need (idempotent, fast when all is there).
deps:
	bash scripts/install-deps.sh

# Both suites run even if the first fails, so that a CI log shows both; the
# target fails if either did.
test: deps
	@unit=0; e2e=0; \
	$(MAKE) test-unit || unit=$$?; \
	$(MAKE) test-e2e || e2e=$$?; \
	echo "make test: unit tests exit $$unit, e2e tests exit $$e2e"; \
	[ $$unit = 0 ] && [ $$e2e = 0 ]

test-unit:
	$(GO) test -race -count=1 ./...

# go test -v prints every subtest; the summary lines (--- PASS/FAIL, ok/FAIL)
# are what CI logs are read for.
test-e2e:
	cd test/e2e && $(GO) test -race -count=1 -timeout $(E2E_TIMEOUT) -v ./...

demo:
	bash scripts/demo.sh

# bench compares Tether with the stock shim under private containerds (bench/,
# a separate module; needs root): prints a table, writes bench/results/latest.*.
# It holds /tmp/tether-heavy.lock (other heavy runs take it too) and waits for a
# running e2e suite to finish. Knobs: BENCH_* variables, see bench/README.md.
bench:
	TETHER_CONTAINERD_VERSIONS=2.4.2 bash scripts/install-deps.sh
	cd bench && $(GO) build -o .bin/tether-bench . && flock -w $${BENCH_LOCK_WAIT:-3600} /tmp/tether-heavy.lock .bin/tether-bench

# The cgroup v2 + systemd layer: one boot of a Debian bookworm qemu VM (image
# built from Debian packages, cached in /opt/tether/vm) running test/e2e/vm
# against containerd 1.6 and 2.4.2 with runc, cgroupfs and systemd drivers.
# test-vm: Tether only; test-vm-full: the stock shim too, and the THP
# measurement; vm-thp: only that. See test/e2e/vm/README.md.
test-vm:
	TETHER_CONTAINERD_VERSIONS=2.4.2 bash scripts/install-deps.sh
	bash scripts/vm/test.sh lean

test-vm-full:
	TETHER_CONTAINERD_VERSIONS=2.4.2 bash scripts/install-deps.sh
	bash scripts/vm/test.sh full

vm-thp:
	TETHER_CONTAINERD_VERSIONS=2.4.2 bash scripts/install-deps.sh
	bash scripts/vm/test.sh thp

lint:
	@out=$$(gofmt -l cmd internal test testkit third_party bench 2>/dev/null); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd test/e2e && $(GO) vet ./...
	cd testkit && $(GO) vet ./...
	cd bench && $(GO) vet ./...
	cd bench/floor && $(GO) vet ./...

clean:
	rm -rf bin
