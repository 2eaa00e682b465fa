#!/usr/bin/env bash
# demo.sh shows Tether running containers under a private containerd.
#
# It installs what is missing (Debian's containerd 1.6, runc, busybox-static),
# builds the shim, starts a containerd of its own (own root, state and socket
# under /var/lib/tether-demo and /run/tether-demo; the system containerd and
# /run/containerd/containerd.sock are never touched), runs a container, shows
# the process tree while another runs, and removes everything again, also when
# something fails on the way. Run it as root: make demo.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNTIME=io.containerd.tether.v2
CONTAINERD=${TETHER_DEMO_CONTAINERD:-/usr/bin/containerd}
CTR=${TETHER_DEMO_CTR:-/usr/bin/ctr}
RUN_DIR=/run/tether-demo
LIB_DIR=/var/lib/tether-demo
SOCK=$RUN_DIR/containerd.sock
NS=tether-demo
ROOTFS=$LIB_DIR/rootfs
LOG=$LIB_DIR/containerd.log

if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi
info() { printf '   %s\n' "$*"; }
ctr() { timeout 60 "$CTR" --address "$SOCK" --namespace "$NS" "$@"; }

if [ "$(id -u)" != 0 ]; then
  echo "demo: run me as root (containerd and runc need it)" >&2
  exit 1
fi

containerd_pid=
cleanup() {
  local rc=$?
  set +e
  say "Cleaning up"
  if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
    for id in $(ctr task ls -q 2>/dev/null); do
      ctr task kill -s SIGKILL "$id" >/dev/null 2>&1
      for _ in $(seq 50); do ctr task ls 2>/dev/null | grep -q "^$id .*STOPPED" && break; sleep 0.1; done
      ctr task rm -f "$id" >/dev/null 2>&1
    done
    for id in $(ctr container ls -q 2>/dev/null); do ctr container rm "$id" >/dev/null 2>&1; done
    "$CTR" --address "$SOCK" namespace rm "$NS" >/dev/null 2>&1
    kill -TERM "$containerd_pid"
    for _ in $(seq 100); do kill -0 "$containerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
    info "containerd stopped"
  fi
  # Shims of this demo that are still around (there should be none).
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "TTRPC_ADDRESS=$SOCK.ttrpc"; then
      info "killing leftover process ${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline")"
      kill -KILL "${p#/proc/}" 2>/dev/null
    fi
  done
  grep -oE " ($RUN_DIR|$LIB_DIR)[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$RUN_DIR" "/run/containerd/runc/$NS"
  if [ "$rc" = 0 ]; then
    rm -rf "$LIB_DIR"
    info "removed $RUN_DIR and $LIB_DIR"
  else
    info "the demo FAILED (exit $rc); containerd's log is kept in $LOG"
    tail -n 30 "$LOG" 2>/dev/null | sed 's/^/   | /'
    find "$LIB_DIR" -mindepth 1 -maxdepth 1 ! -name containerd.log -exec rm -rf {} + 2>/dev/null
  fi
  exit "$rc"
}

say "Checking dependencies (containerd, ctr, runc, busybox-static)"
TETHER_CONTAINERD_VERSIONS="" bash "$REPO/scripts/install-deps.sh"
info "containerd: $("$CONTAINERD" --version)"
info "runc:       $(runc --version | head -n1)"

say "Building the shim"
(cd "$REPO" && go build -o bin/containerd-shim-tether-v2 ./cmd/containerd-shim-tether-v2)
info "$REPO/bin/containerd-shim-tether-v2 -v:"
"$REPO/bin/containerd-shim-tether-v2" -v | sed 's/^/     /'

# From here on everything is undone on exit.
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$RUN_DIR" "$LIB_DIR"
mkdir -p "$RUN_DIR" "$LIB_DIR"

say "Making a busybox root filesystem in $ROOTFS"
mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,run}
chmod 1777 "$ROOTFS/tmp"
cp "$(readlink -f "$(command -v busybox)")" "$ROOTFS/bin/busybox"
for applet in $(busybox --list-full); do
  [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$ROOTFS/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOTFS/etc/passwd"
echo 'root:x:0:' >"$ROOTFS/etc/group"
info "$(find "$ROOTFS" -type l | wc -l) busybox applets"

say "Starting a private containerd on $SOCK"
cat >"$LIB_DIR/config.toml" <<TOML
version = 2
root = "$LIB_DIR/root"
state = "$RUN_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$LIB_DIR/opt"
TOML
# containerd finds containerd-shim-tether-v2 on its PATH for runtime io.containerd.tether.v2.
PATH="$REPO/bin:$PATH" setsid "$CONTAINERD" --config "$LIB_DIR/config.toml" </dev/null >"$LOG" 2>&1 &
containerd_pid=$!
for i in $(seq 150); do
  "$CTR" --address "$SOCK" version >/dev/null 2>&1 && break
  kill -0 "$containerd_pid" 2>/dev/null || { echo "containerd exited; see $LOG" >&2; exit 1; }
  [ "$i" = 150 ] && { echo "containerd did not answer within 30s" >&2; exit 1; }
  sleep 0.2
done
info "containerd pid $containerd_pid, config $LIB_DIR/config.toml, log $LOG"

say "Running a container through Tether: ctr run --rm --runtime $RUNTIME --rootfs ..."
ctr run --rm --runtime "$RUNTIME" --rootfs "$ROOTFS" demo /bin/sh -c '
  echo "Hello from a container run by Tether!"
  echo "  I am PID $$ in my own PID namespace, running $(uname -sr)."
  echo "  My root filesystem holds $(ls /bin | wc -l) busybox commands."
  exit 0' | sed 's/^/   | /'

say "Starting a container in the background: ctr run -d ... demo-bg sleep"
ctr run -d --runtime "$RUNTIME" --rootfs "$ROOTFS" demo-bg /bin/sleep 1000000 >/dev/null
task_pid=
for _ in $(seq 100); do
  task_pid=$(ctr task ls | awk '$1 == "demo-bg" && $3 == "RUNNING" {print $2}')
  [ -n "$task_pid" ] && break
  sleep 0.1
done
[ -n "$task_pid" ] || { echo "demo-bg did not start" >&2; exit 1; }
ctr task ls | sed 's/^/   | /'

address=$(cat "$RUN_DIR/state/io.containerd.runtime.v2.task/$NS/demo-bg/address")
shim_pid=$(awk '{print $4}' "/proc/$task_pid/stat")
shim_parent=$(awk '{print $4}' "/proc/$shim_pid/stat")
say "Who is who"
info "containerd           pid $containerd_pid"
info "the shim             pid $shim_pid ($(tr '\0' ' ' <"/proc/$shim_pid/cmdline" | cut -c1-100))"
info "  its socket         $address"
info "  its parent         pid $shim_parent ($(cat "/proc/$shim_parent/comm")), not containerd: the shim"
info "                     outlives a containerd restart, and containerd reconnects to the socket"
info "the container (sleep) pid $task_pid, a child of the shim"
echo
ps -o pid,ppid,user,rss,args --forest -p "$containerd_pid,$shim_pid,$task_pid" | sed 's/^/   | /'
if [ "$shim_parent" = "$containerd_pid" ]; then
  echo "demo: the shim is a child of containerd; it must not be" >&2
  exit 1
fi

say "Stopping the background container: ctr task kill, ctr task rm, ctr container rm"
ctr task kill -s SIGKILL demo-bg
for _ in $(seq 100); do ctr task ls | grep -q '^demo-bg .*STOPPED' && break; sleep 0.1; done
ctr task rm demo-bg 2>&1 | sed 's/^/   | /'
ctr container rm demo-bg
for _ in $(seq 100); do kill -0 "$shim_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$shim_pid" 2>/dev/null; then
  echo "demo: the shim $shim_pid is still running after its container was removed" >&2
  exit 1
fi
info "the shim has exited and its socket is $( [ -e "${address#unix://}" ] && echo "STILL THERE" || echo gone)"

say "Done: Tether ran both containers."
