#!/bin/bash
# run.sh: run one job in a fresh boot of the test VM and hand back its output
# and exit code.
#
#   scripts/vm/run.sh [options] -- COMMAND [ARG...]
#
#   --share DIR     host directory shared with the guest as /host (9p, tag
#                   host0); a temp directory if not given. The job runs with
#                   /host as its working directory.
#   --timeout SECS  overall deadline from qemu's start (default 1800); qemu is
#                   killed when it passes, and run.sh exits 124
#   --serial FILE   serial console log (default DIR/serial.log)
#   --mem MIB       guest memory (default 4096)
#   --cpus N        guest vCPUs (default 2)
#
# The image is scripts/vm/build-image.sh's (built on first use, cached). The
# kernel runs with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only) and
# systemd as PID 1; the image's tether-vm-autorun.service runs /host/cmd once
# multi-user.target is reached, writes its output to /host/out.log (also on
# the serial console) and its exit code to /host/rc, and powers off. The
# output is streamed to stdout while the job runs; run.sh exits with the
# job's exit code, 124 on timeout, 125 if the VM ended without one.
#
# qemu gets KVM if it works and falls back to TCG (software emulation, slow:
# expect the job to start 25-45 s after qemu does). KVM is tried only if the
# CPU shows vmx or svm, and then probed: a kernel that prints nothing on the
# serial console within 20 s means KVM is unusable (with /dev/kvm present but
# no vmx flag, qemu starts under KVM and hangs). TETHER_VM_ACCEL=kvm|tcg
# forces one.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
share= timeout=1800 serial= mem=4096 cpus=2
while (($#)); do
	case $1 in
	--share) share=$2; shift 2 ;;
	--timeout) timeout=$2; shift 2 ;;
	--serial) serial=$2; shift 2 ;;
	--mem) mem=$2; shift 2 ;;
	--cpus) cpus=$2; shift 2 ;;
	--) shift; break ;;
	*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
(($#)) || { echo "usage: run.sh [options] -- COMMAND [ARG...]" >&2; exit 2; }
log() { echo "run.sh: $*" >&2; }

if ! command -v qemu-system-x86_64 >/dev/null; then
	log "installing qemu-system-x86"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update -q >&2
	apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends qemu-system-x86 >&2
fi
img=$("$here/build-image.sh")

if [[ -z $share ]]; then
	share=$(mktemp -d /tmp/tether-vm-share-XXXXXX)
fi
mkdir -p "$share"
share=$(readlink -f "$share")
serial=${serial:-$share/serial.log}
rm -f "$share/rc" "$share/rc.tmp" "$share/out.log"
{
	echo "#!/bin/sh"
	echo "cd /host || exit 1"
	printf 'exec'
	printf ' %q' "$@"
	echo
} > "$share/cmd"

# kvm_works boots the kernel under KVM for up to 20 s and looks for its banner.
kvm_works() {
	[[ -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo || return 1
	local probe
	probe=$(mktemp /tmp/tether-vm-kvmprobe-XXXXXX)
	timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -monitor none -no-reboot -nic none \
		-serial "file:$probe" -kernel "$img/vmlinuz" -append "console=ttyS0 panic=-1" >/dev/null 2>&1 || true
	local ok=1
	grep -q 'Linux version' "$probe" && ok=0
	rm -f "$probe"
	return $ok
}
case ${TETHER_VM_ACCEL:-auto} in
kvm) accel=(-accel kvm -cpu host) ;;
tcg) accel=(-accel tcg,thread=multi -cpu max) ;;
*)
	if kvm_works; then
		accel=(-accel kvm -cpu host)
	else
		log "KVM unusable here (no vmx/svm flag, or the probe boot printed nothing); using TCG"
		accel=(-accel tcg,thread=multi -cpu max)
	fi
	;;
esac
qemu=(qemu-system-x86_64 "${accel[@]}" -smp "$cpus" -m "$mem"
	-machine q35 -display none -monitor none -no-reboot -nic none
	-serial "file:$serial"
	-kernel "$img/vmlinuz" -initrd "$img/initrd.img"
	-append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1 systemd.show_status=1"
	-drive "file=$img/rootfs.ext4,if=virtio,format=raw,snapshot=on,cache=unsafe"
	-virtfs "local,path=$share,mount_tag=host0,security_model=none,id=host0"
	-device virtio-rng-pci)
log "image $img; accel ${accel[*]}"
log "share $share, serial log $serial, deadline ${timeout}s"
start=$(date +%s)
"${qemu[@]}" 2>"$share/qemu.err" &
qpid=$!
stop_qemu() {
	kill -TERM "$qpid" 2>/dev/null || return 0
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		kill -0 "$qpid" 2>/dev/null || return 0
		sleep 1
	done
	kill -KILL "$qpid" 2>/dev/null || true
}
trap stop_qemu EXIT

# Stream the job's output while qemu runs; enforce the deadline.
off=0 timedout=0
print_new() {
	[[ -f $share/out.log ]] || return 0
	local size
	size=$(stat -c %s "$share/out.log")
	if ((size > off)); then
		tail -c +$((off + 1)) "$share/out.log" | head -c $((size - off))
		off=$size
	fi
}
while kill -0 "$qpid" 2>/dev/null; do
	if (($(date +%s) - start >= timeout)); then
		timedout=1
		log "deadline of ${timeout}s passed; killing qemu"
		stop_qemu
		break
	fi
	print_new
	sleep 2
done
wait "$qpid" 2>/dev/null || true
trap - EXIT
print_new
took=$(($(date +%s) - start))
if [[ -s $share/qemu.err ]]; then
	log "qemu's stderr:"
	sed 's/^/  /' "$share/qemu.err" >&2
fi
grep -a 'tether-vm:' "$serial" | sed 's/^/run.sh: guest: /' >&2 || true
if ((timedout)); then
	log "timed out after ${took}s; last lines of the serial log:"
	tail -n 40 "$serial" | sed 's/^/  /' >&2
	exit 124
fi
if [[ ! -s $share/rc ]]; then
	log "the VM ended after ${took}s without the job's exit code; last lines of the serial log:"
	tail -n 60 "$serial" | sed 's/^/  /' >&2
	exit 125
fi
rc=$(cat "$share/rc")
log "job exited $rc; VM ran ${took}s"
exit "$rc"
