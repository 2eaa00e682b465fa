#!/usr/bin/env bash
# build-suites.sh builds what test/suites runs, into $TETHER_DEPS (default
# /opt/tether), outside the clone; it is idempotent (what is there is kept):
#   suites/src/containerd-1.6.20   Debian's containerd source package (apt-get source
#                                  through a private apt configuration with deb-src
#                                  lines for the system's mirror; the system's apt
#                                  configuration is not touched). In 1.6 the client
#                                  suite is a nested module the Go module proxy lacks.
#   suites/bin/client-1.6.20.test  go test -c of its integration/client
#   suites/bin/client-2.4.2.test   go test -c of github.com/containerd/containerd/v2/integration/client
#                                  (part of the main module in 2.x), from the proxy
#   suites/bin/2.4.2/runc-fp       its failpoint wrapper of runc (TestIssue9103, TestIssue10589)
#   cri-tools-1.34.0/bin/critest   go test -c of sigs.k8s.io/cri-tools/cmd/critest (the
#                                  version of install-deps' crictl)
#   cni-plugins-1.9.1/bin          bridge, host-local, loopback, portmap (critest's pods)
# and Debian's nftables (nft, for portmap) if it is missing.
# Any failure exits non-zero.
set -euo pipefail

DEPS=${TETHER_DEPS:-/opt/tether}
S=$DEPS/suites
CRI_TOOLS=${TETHER_CRICTL_VERSION:-1.34.0}
CNI=1.9.1
DEB_VERSION=1.6.20~ds1-1+deb12u3
mkdir -p "$S/bin" "$S/src"

# critest's pods get ports mapped by the portmap plugin, with nftables.
if ! command -v nft >/dev/null 2>&1; then
  echo "build-suites: apt-get install nftables" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nftables >/dev/null
fi

# The containerd 1.6 source: a private apt state under $S/apt.
if [ ! -f "$S/src/containerd-1.6.20/integration/client/go.mod" ]; then
  echo "build-suites: apt-get source containerd=$DEB_VERSION (private apt config)" >&2
  A=$S/apt
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/sources.list.d"
  : > "$A/sources.list"
  : > "$A/status"
  # deb-src lines for the mirrors of the system's deb lines.
  awk '/^Types:/ {$0="Types: deb-src"} {print}' /etc/apt/sources.list.d/debian.sources > "$A/sources.list.d/debian-src.sources"
  opts=(-o "Dir::Etc::SourceList=$A/sources.list" -o "Dir::Etc::SourceParts=$A/sources.list.d"
        -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o "Dir::State::Status=$A/status")
  apt-get "${opts[@]}" update -qq
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get "${opts[@]}" source --download-only "containerd=$DEB_VERSION" >/dev/null 2>&1)
  rm -rf "$S/src/containerd-1.6.20"
  mkdir -p "$S/src/containerd-1.6.20"
  tar xf "$tmp"/containerd_*.orig.tar.* -C "$S/src/containerd-1.6.20" --strip-components=1
  rm -rf "$tmp"
fi
if [ ! -x "$S/bin/client-1.6.20.test" ]; then
  echo "build-suites: go test -c containerd 1.6.20 integration/client (a few minutes)" >&2
  (cd "$S/src/containerd-1.6.20/integration/client" && GOWORK=off GOFLAGS=-mod=mod go test -c -o "$S/bin/client-1.6.20.test.tmp" . && mv "$S/bin/client-1.6.20.test.tmp" "$S/bin/client-1.6.20.test")
fi
if [ ! -x "$S/bin/client-2.4.2.test" ] || [ ! -x "$S/bin/2.4.2/runc-fp" ]; then
  echo "build-suites: go test -c containerd 2.4.2 integration/client, and its runc-fp (a few minutes)" >&2
  tmp=$(mktemp -d)
  mkdir -p "$S/bin/2.4.2"
  (cd "$tmp" && go mod init scratch >/dev/null 2>&1 && GOFLAGS=-mod=mod go get github.com/containerd/containerd/v2@v2.4.2 >/dev/null 2>&1 &&
   GOFLAGS=-mod=mod go build -o "$S/bin/2.4.2/runc-fp" github.com/containerd/containerd/v2/integration/failpoint/cmd/runc-fp &&
   GOFLAGS=-mod=mod go test -c -o "$S/bin/client-2.4.2.test.tmp" github.com/containerd/containerd/v2/integration/client &&
   mv "$S/bin/client-2.4.2.test.tmp" "$S/bin/client-2.4.2.test")
  rm -rf "$tmp"
fi
out=$DEPS/cri-tools-$CRI_TOOLS/bin
if [ ! -x "$out/critest" ]; then
  echo "build-suites: go test -c critest $CRI_TOOLS (a few minutes)" >&2
  mkdir -p "$out"
  tmp=$(mktemp -d)
  (cd "$tmp" && go mod init scratch >/dev/null 2>&1 && GOFLAGS=-mod=mod go get "sigs.k8s.io/cri-tools@v$CRI_TOOLS" >/dev/null 2>&1 &&
   GOFLAGS=-mod=mod CGO_ENABLED=0 go test -c -o "$out/critest.tmp" sigs.k8s.io/cri-tools/cmd/critest && mv "$out/critest.tmp" "$out/critest")
  rm -rf "$tmp"
fi
out=$DEPS/cni-plugins-$CNI/bin
for p in main/bridge main/loopback ipam/host-local meta/portmap; do
  if [ ! -x "$out/$(basename $p)" ]; then
    echo "build-suites: CNI plugin $p $CNI" >&2
    mkdir -p "$out"
    (cd /tmp && GOBIN=$out GOFLAGS= CGO_ENABLED=0 go install "github.com/containernetworking/plugins/plugins/$p@v$CNI")
  fi
done
echo "build-suites: ok" >&2
