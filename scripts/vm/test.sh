#!/bin/bash
# test.sh: build the shim and the VM test binary on the host, boot the test VM
# once and run the binary in it (make test-vm, test-vm-full, vm-thp).
#
#   scripts/vm/test.sh lean    Tether; containerd 1.6 and 2.4.2; cgroupfs and systemd drivers; a CRI pod (systemd)
#   scripts/vm/test.sh full    the same with containerd's stock shim too, and the THP measurement
#   scripts/vm/test.sh thp     only the THP measurement (10 idle Tether shims, always vs madvise)
#
# Knobs: TETHER_VM_VERSIONS (default 1.6,2.4.2), TETHER_VM_TIMEOUT (seconds
# for the VM, default 1500 lean, 2700 full), TETHER_VM_SHARE (the host
# directory shared with the guest; default /tmp/tether-vm-job, kept after the
# run: out.log, serial.log, logs/ with the containerd logs), TETHER_DEPS
# (/opt/tether), TETHER_VM_DRIVERS (cgroup drivers, default cgroupfs,systemd),
# TETHER_VM_OOM_RUNS (OOM-kill runs per combination, default
# 3), TETHER_VM_RUN (the tests to run, a go test -run pattern; default the
# mode's). The run holds /tmp/tether-heavy.lock (waiting up to
# TETHER_VM_LOCK_WAIT seconds, default 3600); TETHER_VM_NO_LOCK=1 skips the
# lock, for a debugging run next to a long suite of someone else.
set -euo pipefail

mode=${1:-lean}
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
deps=${TETHER_DEPS:-/opt/tether}
versions=${TETHER_VM_VERSIONS:-1.6,2.4.2}
share=${TETHER_VM_SHARE:-/tmp/tether-vm-job}
log() { echo "vm-test: $*" >&2; }

case $mode in
lean) runtimes=io.containerd.tether.v2 run='^(TestCgroupV2|TestCRIPodSystemd)$' timeout=${TETHER_VM_TIMEOUT:-1500} ;;
full) runtimes=io.containerd.tether.v2,io.containerd.runc.v2 run='^(TestCgroupV2|TestCRIPodSystemd|TestShimMemoryTHP)$' timeout=${TETHER_VM_TIMEOUT:-2700} ;;
thp) runtimes=io.containerd.tether.v2 run='^TestShimMemoryTHP$' timeout=${TETHER_VM_TIMEOUT:-1200} ;;
*) log "unknown mode $mode (lean, full, thp)"; exit 2 ;;
esac
run=${TETHER_VM_RUN:-$run}
crictl=$deps/cri-tools-${TETHER_CRICTL_VERSION:-1.34.0}/bin/crictl
[[ -x $crictl ]] || { log "$crictl is missing: run scripts/install-deps.sh"; exit 1; }

# The image first (cached; may take minutes on a cold cache), outside the lock.
"$root/scripts/vm/build-image.sh" >/dev/null

if [[ ${TETHER_VM_NO_LOCK:-} != 1 ]]; then
	exec 8>/tmp/tether-heavy.lock
	log "waiting for /tmp/tether-heavy.lock"
	flock -w "${TETHER_VM_LOCK_WAIT:-3600}" 8 || { log "the heavy-run lock stayed taken"; exit 1; }
fi

rm -rf "$share"
mkdir -p "$share/bin" "$share/logs"
log "building the shim and the test binary into $share"
(cd "$root" && CGO_ENABLED=0 go build -o "$share/bin/containerd-shim-tether-v2" ./cmd/containerd-shim-tether-v2)
(cd "$root/test/e2e" && go test -c -race -tags tethervm -o "$share/bin/vm.test" ./vm)
cp "$crictl" "$share/bin/crictl"
# The CRI config snippets (the README's), read by TestCRIPodSystemd.
mkdir -p "$share/testdata"
cp "$root"/test/e2e/testdata/*.toml "$share/testdata/"

# containerd builds other than Debian's 1.6 go in under the same path.
guest_deps=/opt/tether
for v in ${versions//,/ }; do
	[[ $v == 1.6 ]] && continue
	src="$deps/containerd-$v/bin"
	for b in containerd ctr containerd-shim-runc-v2; do
		[[ -x $src/$b ]] || { log "$src/$b is missing: run scripts/install-deps.sh (TETHER_CONTAINERD_VERSIONS=$v)"; exit 1; }
	done
	mkdir -p "$share/containerd-$v/bin"
	cp "$src"/containerd "$src"/ctr "$src"/containerd-shim-runc-v2 "$share/containerd-$v/bin/"
done

cat > "$share/job.sh" <<JOB
#!/bin/sh
# Written by scripts/vm/test.sh: runs in the guest from /host.
set -e
mkdir -p $guest_deps /usr/local/tether
cp /host/bin/containerd-shim-tether-v2 /host/bin/vm.test /host/bin/crictl /usr/local/tether/
for d in /host/containerd-*; do [ -d "\$d" ] && cp -r "\$d" $guest_deps/; done
echo "guest: \$(uname -r), \$(systemd-detect-virt), \$(nproc) cpus, thp \$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
echo "guest: runc \$(runc --version | head -1), containerd \$(containerd --version)"
cd /usr/local/tether
set +e
TETHER_SHIM_BIN=/usr/local/tether/containerd-shim-tether-v2 TETHER_DEPS=$guest_deps \\
TETHER_VM_CRICTL=/usr/local/tether/crictl TETHER_VM_TESTDATA=/host/testdata \\
TETHER_VM_VERSIONS=$versions TETHER_VM_RUNTIMES=$runtimes TETHER_VM_LOGDIR=/host/logs TETHER_VM_OOM_RUNS=${TETHER_VM_OOM_RUNS:-3} TETHER_VM_DRIVERS=${TETHER_VM_DRIVERS:-cgroupfs,systemd} \\
	./vm.test -test.v -test.count=1 -test.timeout=$((timeout - 120))s -test.run '$run'
rc=\$?
cp /var/log/syslog /host/logs/ 2>/dev/null
journalctl -b --no-pager > /host/logs/journal.txt 2>&1
exit \$rc
JOB

start=$(date +%s)
set +e
"$root/scripts/vm/run.sh" --share "$share" --timeout "$timeout" -- sh /host/job.sh
rc=$?
set -e
out="$share/out.log"
pass=$(grep -c -- '--- PASS' "$out" 2>/dev/null || true)
fail=$(grep -c -- '--- FAIL' "$out" 2>/dev/null || true)
log "mode $mode: exit $rc after $(( $(date +%s) - start )) s; $pass subtests passed, $fail failed (--- PASS/FAIL lines in $out)"
grep -- '--- FAIL' "$out" 2>/dev/null | sed 's/^/vm-test: /' >&2 || true
grep '^vm-thp:' "$out" 2>/dev/null >&2 || true
exit $rc
