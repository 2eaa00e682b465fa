#!/bin/bash
# build-image.sh: the Debian bookworm VM image of the cgroup v2 + systemd test
# layer (test/e2e/vm), built only from Debian packages with debootstrap.
#
#   scripts/vm/build-image.sh        build unless cached; print the image directory
#
# The image lives outside the clone, in $TETHER_VM_CACHE (default
# /opt/tether/vm) under bookworm-<hash>, where <hash> is the sha256 (first 16
# hex digits) of this script: a changed script yields a new image, an
# unchanged one reuses the cached image. The directory holds
#   rootfs.ext4   the root filesystem (raw ext4, no partition table; qemu
#                 opens it with snapshot=on, so a run never changes it)
#   vmlinuz, initrd.img   the kernel and initramfs of the image, booted directly
#   packages.txt  dpkg -l of the image
# and appears atomically (built in a temp directory, then renamed), so a killed
# build leaves no half image behind. Everything the guest needs to run a job
# (the autorun unit below) is part of this script, hence of the hash.
#
# Host tools (debootstrap, e2fsprogs) are installed with apt-get if missing.
set -euo pipefail

MIRROR=${TETHER_VM_MIRROR:-http://deb.debian.org/debian}
CACHE=${TETHER_VM_CACHE:-/opt/tether/vm}
SUITE=bookworm
SIZE=6G

self=$(readlink -f "${BASH_SOURCE[0]}")
hash=$(sha256sum "$self" | cut -c1-16)
out="$CACHE/$SUITE-$hash"
log() { echo "build-image: $*" >&2; }

if [[ -s $out/rootfs.ext4 && -s $out/vmlinuz && -s $out/initrd.img ]]; then
	log "cached: $out"
	echo "$out"
	exit 0
fi
[[ $(id -u) == 0 ]] || { log "must run as root (debootstrap, chroot)"; exit 1; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update -q >&2
	apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need[@]}" >&2
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock -w 3600 9 || { log "another build holds $CACHE/.build.lock"; exit 1; }
# Someone else may have built it while we waited.
if [[ -s $out/rootfs.ext4 && -s $out/vmlinuz && -s $out/initrd.img ]]; then
	log "cached: $out"
	echo "$out"
	exit 0
fi

tmp=$(mktemp -d "$CACHE/.build-$hash-XXXXXX")
root="$tmp/root"
cleanup() {
	for m in dev/pts dev proc sys; do
		mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
start=$(date +%s)

log "debootstrap $SUITE from $MIRROR into $root"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,kmod,udev,procps,util-linux,ca-certificates \
	"$SUITE" "$root" "$MIRROR" >&2

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

# The initramfs must mount a virtio root; 9p is loaded by the autorun script.
mkdir -p "$root/etc/initramfs-tools"
cat > "$root/etc/initramfs-tools/modules" <<'MOD'
virtio_pci
virtio_blk
ext4
9pnet_virtio
9p
MOD
cat > "$root/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
SRC
log "installing the kernel, containerd, runc and the rest in the image"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	linux-image-amd64 initramfs-tools containerd runc busybox-static iproute2 e2fsprogs >&2
chroot "$root" apt-get clean

# No daemon the tests do not start: the tests run private containerds.
chroot "$root" systemctl disable containerd.service >&2 || true
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
	getty@tty1.service serial-getty@ttyS0.service systemd-timesyncd.service; do
	chroot "$root" systemctl mask "$u" >&2 || true
done

echo tether-vm > "$root/etc/hostname"
echo "127.0.1.1 tether-vm" >> "$root/etc/hosts"
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"

# The autorun: once multi-user.target is reached, mount the host's share
# (9p, tag host0) on /host, run /host/cmd with its output in /host/out.log
# (and on the serial console), its exit code in /host/rc, then power off.
cat > "$root/usr/local/sbin/tether-vm-autorun" <<'RUN'
#!/bin/sh
# tether-vm-autorun: run the host's job (see scripts/vm/build-image.sh).
con=/dev/ttyS0
say() { echo "tether-vm: $*" > $con; }
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,access=any host0 /host; then
	say "mounting the 9p share host0 failed"
	systemctl poweroff --force
	exit 1
fi
if grep -q '^no-autorun' /host/mode 2>/dev/null; then
	say "autorun disabled by /host/mode; not powering off"
	exit 0
fi
say "multi-user reached after $(cut -d' ' -f1 /proc/uptime) s of uptime; virt $(systemd-detect-virt); running /host/cmd"
rm -f /host/rc
( sh -x /host/cmd 2>&1; echo $? > /host/rc.tmp ) | tee /host/out.log > $con
mv /host/rc.tmp /host/rc
say "job exited $(cat /host/rc) at $(cut -d' ' -f1 /proc/uptime) s of uptime; powering off"
sync
systemctl poweroff --force
RUN
chmod 755 "$root/usr/local/sbin/tether-vm-autorun"
cat > "$root/etc/systemd/system/tether-vm-autorun.service" <<'UNIT'
[Unit]
Description=Tether VM job from the host share
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tether-vm-autorun
TimeoutStartSec=infinity
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable tether-vm-autorun.service >&2

chroot "$root" dpkg -l > "$tmp/packages.txt"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)
cp "$kernel" "$tmp/vmlinuz"
cp "$initrd" "$tmp/initrd.img"
# (The list is read whole first: grep -q ending the pipe early would make
# lsinitramfs die of SIGPIPE, which pipefail reports as "not found".)
inside=$(chroot "$root" lsinitramfs "/boot/$(basename "$initrd")")
for m in 9p 9pnet_virtio virtio_blk ext4; do
	grep -q "/$m.ko" <<<"$inside" || log "note: $m.ko not in the initramfs (loaded from the root fs)"
done

for m in dev/pts dev proc sys; do umount -l "$root/$m"; done
log "making the ext4 image ($SIZE, sparse)"
mkfs.ext4 -q -F -L tether-vm -d "$root" "$tmp/rootfs.ext4" "$SIZE" >&2
rm -rf "$root"
mv "$tmp" "$out"
trap - EXIT
log "built $out in $(( $(date +%s) - start )) s"
echo "$out"
