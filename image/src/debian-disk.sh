#!/bin/bash
# Builds a bootable Debian 12 (bookworm) disk image from Debian packages: the base that both the appliance
# image (`livemount image appliance`) and the boot tests' sample guest are made from.
#
#   debian-disk.sh OUT.img
#
# The image is raw and sparse, with an MBR partition table, one ext4 root partition mounted by UUID, GRUB for
# BIOS boot and the serial console on ttyS0 (115200). What makes it one system or another comes from the
# environment:
#   DISK_SIZE        image size (default 2G)
#   DISK_HOSTNAME    host name (default debian)
#   DISK_INCLUDE     more packages for debootstrap, comma-separated
#   DISK_CMDLINE     more kernel command line
#   DISK_CUSTOMIZE   a program run as `DISK_CUSTOMIZE ROOT` once the kernel and boot loader are in, with
#                    /dev, /proc, /sys and /run mounted in ROOT and apt usable there (`chroot ROOT apt-get ...`)
#   DISK_MIRROR      the Debian archive (required: the caller takes it from the machine's apt sources)
#   DISK_DEB_CACHE   debootstrap's and apt's package cache, kept across builds (default
#                    /var/cache/livemount-guest/debs)
# Networking is left to DISK_CUSTOMIZE (a file in /etc/network/interfaces.d/): the base has loopback only.
#
# Cached: if OUT exists it is complete (it is built under a temporary name and renamed at the end), and
# nothing is done. Needs root, debootstrap, sfdisk, losetup, partx, mkfs.ext4 and the mirror.
set -euo pipefail

OUT=${1:?usage: $0 OUT.img}
SIZE=${DISK_SIZE:-2G}
HOST=${DISK_HOSTNAME:-debian}
MIRROR=${DISK_MIRROR:?DISK_MIRROR: the Debian archive to install from}
DEB_CACHE=${DISK_DEB_CACHE:-/var/cache/livemount-guest/debs}
SUITE=bookworm
BASE_PACKAGES=systemd-sysv,udev,kmod,e2fsprogs,initramfs-tools,ifupdown,isc-dhcp-client,iproute2,util-linux,procps

log() { echo "debian-disk: $*" >&2; }

if [[ -s $OUT ]]; then
    log "$OUT exists, nothing to do"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }
for tool in debootstrap sfdisk losetup partx mkfs.ext4 blkid findmnt; do
    command -v "$tool" >/dev/null || { log "$tool is missing (apt install debootstrap fdisk e2fsprogs util-linux)"; exit 1; }
done

OUT_DIR=$(dirname -- "$OUT")
mkdir -p -- "$OUT_DIR" "$DEB_CACHE"
# Builds that share the package cache take turns: two debootstraps (or apt runs) in one cache fight over it.
exec 9>"$DEB_CACHE/.lock"
flock 9
TMP_IMG=$(mktemp -p "$OUT_DIR" ".$(basename -- "$OUT").tmp.XXXXXX")
MNT=$(mktemp -d /tmp/livemount-disk-root.XXXXXX)
LOOP=
MADE_LINK=

cleanup() {
    set +e
    [[ -n $MADE_LINK ]] && rm -f "$MADE_LINK"
    for sub in var/cache/apt/archives dev/pts dev proc sys run; do
        mountpoint -q "$MNT/$sub" && umount -l "$MNT/$sub"
    done
    mountpoint -q "$MNT" && umount "$MNT"
    [[ -n $LOOP ]] && losetup -d "$LOOP"
    rmdir "$MNT" 2>/dev/null
    rm -f -- "$TMP_IMG"
}
trap cleanup EXIT

# --- the disk: MBR, one bootable Linux partition from 1 MiB to the end ---
truncate -s "$SIZE" "$TMP_IMG"
echo 'start=2048, type=83, bootable' | sfdisk --quiet --label dos "$TMP_IMG"

LOOP=$(losetup -f --show -P "$TMP_IMG")
PART=${LOOP}p1
# On some kernels (and without udev in a container) the partition node does not appear by itself.
for _ in $(seq 50); do
    [[ -b $PART ]] && break
    partx -a "$LOOP" 2>/dev/null || true
    if [[ ! -b $PART ]]; then
        sysdev=/sys/class/block/$(basename "$PART")/dev
        [[ -r $sysdev ]] && mknod "$PART" b "$(cut -d: -f1 "$sysdev")" "$(cut -d: -f2 "$sysdev")" 2>/dev/null || true
    fi
    sleep 0.1
done
[[ -b $PART ]] || { log "partition $PART did not appear"; exit 1; }

mkfs.ext4 -q -L root "$PART"
ROOT_UUID=$(blkid -s UUID -o value "$PART")
mount "$PART" "$MNT"

# --- the base system ---
INCLUDE=$BASE_PACKAGES${DISK_INCLUDE:+,$DISK_INCLUDE}
log "debootstrap $SUITE (minbase) into $MNT"
debootstrap --variant=minbase --cache-dir="$DEB_CACHE" --include="$INCLUDE" "$SUITE" "$MNT" "$MIRROR" >&2

mount --bind /dev "$MNT/dev"
mount --bind /dev/pts "$MNT/dev/pts"
mount -t proc proc "$MNT/proc"
mount -t sysfs sys "$MNT/sys"
mount -t tmpfs tmpfs "$MNT/run"
# Reuse downloaded packages across builds.
mkdir -p "$DEB_CACHE/apt/partial"
mount --bind "$DEB_CACHE/apt" "$MNT/var/cache/apt/archives"
cp -L /etc/resolv.conf "$MNT/etc/resolv.conf"
echo "deb $MIRROR $SUITE main" >"$MNT/etc/apt/sources.list"

cat >"$MNT/etc/fstab" <<EOF
UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1
EOF
echo "$HOST" >"$MNT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$HOST" >"$MNT/etc/hosts"
cat >"$MNT/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF

# Kernel and boot loader. Configure GRUB before installing it so the first grub.cfg is already right.
mkdir -p "$MNT/etc/default/grub.d"
cat >"$MNT/etc/default/grub.d/livemount.cfg" <<EOF
GRUB_TIMEOUT=1
GRUB_TIMEOUT_STYLE=menu
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200${DISK_CMDLINE:+ $DISK_CMDLINE}"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
GRUB_DISABLE_OS_PROBER=true
GRUB_DISABLE_RECOVERY=true
EOF

log "installing the kernel and GRUB"
chroot "$MNT" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C \
    sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends linux-image-amd64 grub-pc' >&2

# The customization runs before the boot loader is configured: a package it installs may run update-grub,
# which without udev names the root by its loop device; the update-grub below writes the right one last.
if [[ -n ${DISK_CUSTOMIZE:-} ]]; then
    log "customizing with $DISK_CUSTOMIZE"
    "$DISK_CUSTOMIZE" "$MNT" >&2
fi

chroot "$MNT" grub-install --target=i386-pc --recheck "$LOOP" >&2
# grub-mkconfig writes root=UUID=... only if /dev/disk/by-uuid/<uuid> exists, which udev makes; without udev
# (a container) it would write root=/dev/loopNp1. Make the link for the time of update-grub.
BYUUID=/dev/disk/by-uuid/$ROOT_UUID
if [[ ! -e $BYUUID ]]; then
    mkdir -p /dev/disk/by-uuid
    ln -s "../../$(basename "$PART")" "$BYUUID"
    MADE_LINK=$BYUUID
fi
chroot "$MNT" update-grub >&2
if [[ -n ${MADE_LINK:-} ]]; then rm -f "$MADE_LINK"; MADE_LINK=; fi
grep -q "root=UUID=$ROOT_UUID" "$MNT/boot/grub/grub.cfg" || { log "grub.cfg does not name root=UUID=$ROOT_UUID"; exit 1; }

chroot "$MNT" systemctl enable serial-getty@ttyS0.service >&2 || true

# A fresh machine id on first boot; no leftovers.
: >"$MNT/etc/machine-id"
rm -f "$MNT/var/lib/dbus/machine-id"
# The build's resolver file goes; a link (a resolver the system manages) stays.
[[ -L $MNT/etc/resolv.conf ]] || rm -f "$MNT/etc/resolv.conf"
rm -rf "$MNT"/var/lib/apt/lists/* "$MNT"/tmp/* "$MNT"/var/log/*.log

for sub in var/cache/apt/archives dev/pts dev proc sys run; do umount "$MNT/$sub"; done
fstrim "$MNT" 2>/dev/null || true
umount "$MNT"
e2fsck -f -p "$PART" >&2 || [[ $? -le 1 ]]
losetup -d "$LOOP"
LOOP=
sync -f "$TMP_IMG"
chmod 644 "$TMP_IMG"
mv -f -- "$TMP_IMG" "$OUT"
log "built $OUT (root UUID $ROOT_UUID)"
