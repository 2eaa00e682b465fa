# Tether: a containerd runtime v2 shim.
#
#   make build      build the shim and the operator's tool `tether` into ./bin
#   make test       install missing deps, then unit tests and end-to-end tests
#   make test-unit  unit tests of the root module (go test -race)
#   make test-e2e   end-to-end tests (test/e2e, a separate module; needs root)
#   make demo       run a container through Tether under a private containerd
#   make lint       gofmt and go vet, in every module
#   make fuzz       every fuzz target for FUZZTIME (30s) each
#   make stress     the stress and fault suite and the abuse of the shim over its
#                   socket at ten times make test's scale, then make fuzz
#
#   make test-suites  containerd's integration/client suite and critest, in full,
#                   against Tether and the stock shim (test/suites; needs root)
#
# The e2e tests take TETHER_E2E_VERSIONS (e.g. 1.6,2.4.2), TETHER_E2E_RUNC
# (runc binaries, default Debian's and /opt/tether/runc-1.5.3/bin/runc),
# TETHER_E2E_RUNTIME (e.g. io.containerd.runc.v2 to check the harness with
# containerd's own shim) and TETHER_SHIM_BIN (a prebuilt shim); see
# test/e2e/README.md. The CRI tests (TestCRI*) need crictl, which `make deps`
# builds.

SHELL := /bin/bash
GO ?= go
BIN := bin/containerd-shim-tether-v2
CLI := bin/tether
E2E_TIMEOUT ?= 75m

.PHONY: all build test test-unit test-e2e test-suites test-suites-short suites-deps deps demo lint clean bench fuzz stress test-vm test-vm-full vm-thp

all: build

# Static and without cgo: no ld.so or libc pages in every shim (docs/performance.md).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/containerd-shim-tether-v2
	CGO_ENABLED=0 $(GO) build -o $(CLI) ./cmd/tether

# deps installs what the tests need (idempotent, fast when all is there).
deps:
	bash scripts/install-deps.sh

# All four run even if one fails, so that a CI log shows them all; the
# target fails if any did.
test: deps
	@unit=0; e2e=0; suites=0; vm=0; \
	$(MAKE) test-unit || unit=$$?; \
	$(MAKE) test-e2e || e2e=$$?; \
	$(MAKE) test-suites-short || suites=$$?; \
	$(MAKE) test-vm || vm=$$?; \
	echo "make test: unit tests exit $$unit, e2e tests exit $$e2e, ecosystem suites (short) exit $$suites, cgroup v2 + systemd VM exit $$vm"; \
	[ $$unit = 0 ] && [ $$e2e = 0 ] && [ $$suites = 0 ] && [ $$vm = 0 ]

test-unit:
	$(GO) test -race -count=1 ./...

# go test -v prints every subtest; the summary lines (--- PASS/FAIL, ok/FAIL)
# are what CI logs are read for.
test-e2e:
	cd test/e2e && $(GO) test -race -count=1 -timeout $(E2E_TIMEOUT) -v ./...

# suites-deps builds containerd's integration/client suites (1.6.20 from Debian's
# source package, 2.4.2 from the module proxy), critest and the CNI plugins into
# /opt/tether (idempotent).
suites-deps:
	bash scripts/build-suites.sh

# The ecosystem's suites against Tether and, on the same machine, the stock shim;
# each prints its counts beside the stock shim's and fails if Tether fails a test
# the stock shim passes (test/suites/README.md). test-suites-short is the subset
# make test runs; test-suites runs everything and rewrites the README's table.
test-suites-short: suites-deps build
	cd test/suites && $(GO) run . -short

test-suites: suites-deps build
	cd test/suites && $(GO) run . -table results.md

demo:
	bash scripts/demo.sh

# fuzz runs every fuzz target for FUZZTIME (default 30s) each; make test runs
# their seed corpora (testdata/fuzz) as ordinary tests.
fuzz:
	bash scripts/fuzz.sh

# stress: at ten times make test's amount, the stress and fault suite
# (TestStress*: soak, containerd killed, shims killed, hung runtime; under
# the first and last containerd) and the abuse of a live shim (under every
# containerd and runc), then every fuzz target for FUZZTIME. The figures are
# the log's "stress-figure:" lines.
stress: deps
	cd test/e2e && TETHER_STRESS_SCALE=$${TETHER_STRESS_SCALE:-10} flock -w 3600 /tmp/tether-heavy.lock $(GO) test -race -count=1 -timeout $(E2E_TIMEOUT) -v -run 'TestStress|TestTTRPCAbuse' ./...
	bash scripts/fuzz.sh

# bench compares Tether with the stock shim under private containerds (bench/,
# a separate module; needs root): prints a table, writes bench/results/latest.*.
# It holds /tmp/tether-heavy.lock (other heavy runs take it too) and waits for a
# running e2e suite to finish. Knobs: BENCH_* variables, see bench/README.md.
bench:
	TETHER_CONTAINERD_VERSIONS=2.4.2 bash scripts/install-deps.sh
	cd bench && $(GO) build -o .bin/tether-bench . && flock -w $${BENCH_LOCK_WAIT:-3600} /tmp/tether-heavy.lock .bin/tether-bench

# The cgroup v2 + systemd layer: one boot of a Debian bookworm qemu VM (image
# built from Debian packages, cached in /opt/tether/vm) running test/e2e/vm
# against containerd 1.6 and 2.4.2 with runc, cgroupfs and systemd drivers,
# and CRI pods through crictl under the systemd driver. test-vm: Tether only;
# test-vm-full: the stock shim too, and the THP measurement; vm-thp: only
# that. See test/e2e/vm/README.md.
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
	cd test/suites && $(GO) vet ./...
	cd bench && $(GO) vet ./...
	cd bench/floor && $(GO) vet ./...

clean:
	rm -rf bin
