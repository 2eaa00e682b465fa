#!/usr/bin/env bash
# install-deps.sh installs everything the demo, the tests and the benchmarks need:
# Debian's containerd 1.6, runc, crun, busybox-static and prometheus (for promtool), and containerd 1.7, 2.2 and 2.4
# (plus the stock containerd-shim-runc-v2 of 2.4, for bench/), crictl (cri-tools, for the
# CRI tests), a current runc (built with seccomp against Debian's libseccomp-dev), and
# dockerd and the docker CLI 28.5.2 (for the Docker e2e test), built from the Go module
# proxy into $TETHER_DEPS (default /opt/tether). It is
# idempotent: what is present is not rebuilt. Any failure exits non-zero.
set -euo pipefail

DEPS=${TETHER_DEPS:-/opt/tether}
want_apt=()
# promtool (Debian's prometheus package) checks `tether metrics` output in the tests.
for pair in containerd:containerd ctr:containerd runc:runc crun:crun busybox:busybox-static promtool:prometheus; do
  bin=${pair%%:*} pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || want_apt+=("$pkg")
done
# The runc build below links libseccomp through cgo.
for pkg in libseccomp-dev pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want_apt+=("$pkg")
done
# busybox must be the static build: the rootfs copies it as the only binary.
if command -v busybox >/dev/null 2>&1 && ! file -L "$(command -v busybox)" 2>/dev/null | grep -q static; then
  want_apt+=(busybox-static)
fi
if [ ${#want_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${want_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${want_apt[@]}" >/dev/null
fi

# build_containerd VERSION MODULE: builds containerd and ctr of VERSION into $DEPS/containerd-VERSION/bin.
# A scratch module that requires the release is used for every version, because 1.7's go.mod
# has exclude directives that `go install pkg@version` refuses.
build_containerd() {
  local ver=$1 mod=$2 out=$DEPS/containerd-$1/bin
  if [ -x "$out/containerd" ] && [ -x "$out/ctr" ]; then return 0; fi
  echo "install-deps: building containerd $ver (a few minutes)" >&2
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    go mod init scratch >/dev/null 2>&1
    GOFLAGS=-mod=mod go get "$mod@v$ver" >/dev/null 2>&1
    mkdir -p "$out"
    GOFLAGS=-mod=mod CGO_ENABLED=1 go build -tags "no_btrfs no_devmapper no_zfs no_aufs" -o "$out/containerd" "$mod/cmd/containerd"
    GOFLAGS=-mod=mod CGO_ENABLED=1 go build -tags "no_btrfs no_devmapper no_zfs no_aufs" -o "$out/ctr" "$mod/cmd/ctr"
  )
  rm -rf "$tmp"
}

# build_runc_shim VERSION: builds containerd's own containerd-shim-runc-v2 of VERSION (2.x)
# into $DEPS/containerd-VERSION/bin, the stock shim the benchmarks (bench/) compare Tether
# with. Built as `go install ...@vVERSION` would (default cgo setting, no tags), from a
# scratch module like containerd itself.
build_runc_shim() {
  local ver=$1 mod=github.com/containerd/containerd/v2 out=$DEPS/containerd-$1/bin
  if [ -x "$out/containerd-shim-runc-v2" ]; then return 0; fi
  echo "install-deps: building containerd-shim-runc-v2 $ver (a minute or two)" >&2
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    go mod init scratch >/dev/null 2>&1
    GOFLAGS=-mod=mod go get "$mod@v$ver" >/dev/null 2>&1
    mkdir -p "$out"
    GOFLAGS=-mod=mod go build -o "$out/containerd-shim-runc-v2" "$mod/cmd/containerd-shim-runc-v2"
  )
  rm -rf "$tmp"
}

# build_crictl VERSION: builds crictl of cri-tools VERSION into $DEPS/cri-tools-VERSION/bin.
build_crictl() {
  local ver=$1 out=$DEPS/cri-tools-$1/bin
  if [ -x "$out/crictl" ]; then return 0; fi
  echo "install-deps: building crictl $ver (a minute or two)" >&2
  mkdir -p "$out"
  GOBIN=$out GOFLAGS= CGO_ENABLED=0 go install "sigs.k8s.io/cri-tools/cmd/crictl@v$ver"
}

# build_runc VERSION: builds runc VERSION with seccomp into $DEPS/runc-VERSION/bin, beside
# Debian's runc 1.1.5 (the e2e tests run with both: TETHER_E2E_RUNC).
build_runc() {
  local ver=$1 out=$DEPS/runc-$1/bin
  if [ -x "$out/runc" ]; then return 0; fi
  echo "install-deps: building runc $ver (a minute or two)" >&2
  mkdir -p "$out"
  GOBIN=$out GOFLAGS= CGO_ENABLED=1 go install -tags seccomp "github.com/opencontainers/runc@v$ver"
  "$out/runc" --version | grep -q "^libseccomp:" || { echo "install-deps: $out/runc has no seccomp" >&2; exit 1; }
}

build_crictl "${TETHER_CRICTL_VERSION:-1.34.0}"
build_runc "${TETHER_RUNC_VERSION:-1.5.3}"

# build_docker VERSION: builds dockerd (github.com/docker/docker) and the docker CLI
# (github.com/docker/cli) of release VERSION into $DEPS/docker-VERSION/bin, for the Docker
# e2e test (test/e2e/docker_test.go). Neither has a go.mod at that tag: the source is taken
# from the module proxy (`go mod download`), its vendor.mod/vendor.sum become go.mod/go.sum
# (as upstream's hack/ scripts do), and the exact dependency versions they pin are fetched
# from the proxy. dockerd is built with cgo but without the btrfs graph driver (no
# libbtrfs headers needed); the CLI without cgo.
build_docker() {
  local ver=$1 out=$DEPS/docker-$1/bin
  if [ -x "$out/dockerd" ] && [ -x "$out/docker" ]; then return 0; fi
  echo "install-deps: building dockerd and docker $ver (several minutes)" >&2
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    go mod init scratch >/dev/null 2>&1
    GOFLAGS=-mod=mod go get "github.com/docker/docker@v$ver+incompatible" "github.com/docker/cli@v$ver+incompatible" >get.log 2>&1 ||
      { cat get.log >&2; exit 1; }
    for m in docker cli; do
      src=$(GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "github.com/docker/$m")
      [ -f "$src/vendor.mod" ] || { echo "install-deps: github.com/docker/$m@v$ver: no vendor.mod in '$src'" >&2; exit 1; }
      cp -r "$src" "$tmp/$m"
      chmod -R u+w "$tmp/$m"
      cp "$tmp/$m/vendor.mod" "$tmp/$m/go.mod"
      cp "$tmp/$m/vendor.sum" "$tmp/$m/go.sum"
      rm -rf "$tmp/$m/vendor"
    done
    mkdir -p "$out"
    (cd "$tmp/docker" && GOFLAGS=-mod=mod CGO_ENABLED=1 go build -tags exclude_graphdriver_btrfs \
      -ldflags "-X github.com/docker/docker/dockerversion.Version=$ver" -o "$out/dockerd.tmp" ./cmd/dockerd)
    (cd "$tmp/cli" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build \
      -ldflags "-X github.com/docker/cli/cli/version.Version=$ver" -o "$out/docker.tmp" ./cmd/docker)
    mv "$out/dockerd.tmp" "$out/dockerd"
    mv "$out/docker.tmp" "$out/docker"
  )
  rm -rf "$tmp"
}

versions=${TETHER_CONTAINERD_VERSIONS:-"1.7.35 2.2.1 2.4.2"}
# containerd versions whose stock shim is built too (only those also in $versions).
shim_versions=${TETHER_RUNC_SHIM_VERSIONS:-"2.4.2"}
for v in $versions; do
  case $v in
    1.*) build_containerd "$v" github.com/containerd/containerd ;;
    *)   build_containerd "$v" github.com/containerd/containerd/v2 ;;
  esac
  case " $shim_versions " in
    *" $v "*) build_runc_shim "$v" ;;
  esac
done
# Docker for test/e2e/docker_test.go; TETHER_DOCKER_VERSIONS= (empty) skips the build.
for v in ${TETHER_DOCKER_VERSIONS-28.5.2}; do
  build_docker "$v"
done
echo "install-deps: ok" >&2
