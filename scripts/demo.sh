#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: build livemount, create the default library, back up a sample
# disk image (a real GPT-partitioned ext4 image with files), verify and show it; then live-mount a VM: build
# a bootable Debian guest disk from Debian packages, back it up, start the daemon, mount the backup with
# --boot (the guest is prepared to run from iSCSI) and print how to boot it.
# Usage: scripts/demo.sh            (as root; the library goes to /var/lib/livemount/library unless
#                                    LIVEMOUNT_LIBRARY says otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/livemount/target}"

scripts/install-deps.sh run
cargo build --release -p appliance
livemount="$CARGO_TARGET_DIR/release/livemount"
library="${LIVEMOUNT_LIBRARY:-/var/lib/livemount/library}"
export LIVEMOUNT_LIBRARY="$library"
export LIVEMOUNT_API="${LIVEMOUNT_API:-/run/livemount/api.sock}"

if [ ! -f "$library/library.json" ]; then
    "$livemount" library init
fi

# A sample machine disk: 256 MiB, GPT, one ext4 partition holding some files.
work="${DEMO_DIR:-/var/lib/livemount/demo}"
mkdir -p "$work"
disk="$work/sample-disk.img"
if [ ! -f "$disk" ]; then
    tree="$work/tree"
    rm -rf "$tree" && mkdir -p "$tree/etc" "$tree/home/user/documents" "$tree/var/log"
    cp -r /etc/apt /etc/ssl "$tree/etc/" 2>/dev/null || true
    echo "sample-guest" > "$tree/etc/hostname"
    for i in $(seq 1 20); do
        head -c 1048576 /dev/urandom > "$tree/home/user/documents/report-$i.bin"
    done
    cp -r /usr/share/common-licenses "$tree/home/user/documents/" 2>/dev/null || true
    truncate -s 256M "$disk"
    printf 'label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n' | sfdisk --quiet "$disk"
    truncate -s 254M "$work/part.img"
    mkfs.ext4 -q -F -d "$tree" "$work/part.img"
    dd if="$work/part.img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -f "$work/part.img"
    rm -rf "$tree"
fi

echo "== backing up $disk"
"$livemount" backup create "$disk" --name sample
echo "== verifying"
"$livemount" backup verify sample
echo "== the backup"
"$livemount" backup show sample
echo "== the library"
"$livemount" library stats

echo "== a bootable Debian guest (built once from Debian packages, cached)"
guest_cache=/var/cache/livemount-guest
mkdir -p "$guest_cache"
tests/fixtures/make-guest-image.sh "$guest_cache/bookworm.img"
packages=/var/lib/livemount/guest-packages/debian-12
if [ ! -f "$packages/.complete" ]; then
    mkdir -p "$packages"
    tests/fixtures/fetch-open-iscsi-debs.sh "$packages"
    touch "$packages/.complete"
fi
"$livemount" backup create "$guest_cache/bookworm.img" --name demo-guest

echo "== the daemon"
if ! "$livemount" mounts >/dev/null 2>&1; then
    # QEMU's user-mode network reaches this host's 127.0.0.1 as 10.0.2.2.
    mkdir -p /var/log/livemount
    setsid "$livemount" serve --portal 127.0.0.1:3260 --http 127.0.0.1:8080 --advertise 10.0.2.2 \
        >>/var/log/livemount/daemon.log 2>&1 < /dev/null &
    for _ in $(seq 1 100); do
        "$livemount" mounts >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$livemount" mounts >/dev/null
    echo "livemount serve is running (log: /var/log/livemount/daemon.log; stop it with: pkill -TERM -f 'livemount serve')"
fi

echo "== live-mounting the guest to boot it"
"$livemount" unmount demo-vm >/dev/null 2>&1 || true
mac=52:54:00:4c:4d:00
"$livemount" mount demo-guest --boot --mac "$mac" --name demo-vm
"$livemount" image ipxe-disk /var/lib/livemount/ipxe-boot.img --appliance-url http://10.0.2.2:8080
cat <<TXT

Ready. Boot the live-mounted VM through the iPXE boot disk (about a minute under TCG; the guest prints
LIVEMOUNT-BOOT-MARKER on the serial console when its userspace runs from the iSCSI disk):

  cp /var/lib/livemount/ipxe-boot.img /tmp/boot.img && \\
  qemu-system-x86_64 -accel tcg -m 1024 -nographic -drive file=/tmp/boot.img,format=raw,if=ide \\
      -netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=$mac -boot c

or straight from QEMU's iPXE with the "boot it with" line above. Writes land in the mount's private store;
\`livemount unmount demo-vm\` deletes them and leaves the backup as it was.

The appliance itself as a VM (or an AWS machine image): build the Debian package and the access node's
disk (a few minutes), then boot it with a config drive of first-boot settings (README, "Operating the
appliance"); its daemon comes up by itself:

  packaging/build-deb.sh                  # a release build first (~15 min cold); --profile dev packages the debug build
  $livemount image appliance /var/lib/livemount/appliance.img --deb $CARGO_TARGET_DIR/debian/livemount_*.deb
  qemu-system-x86_64 -accel tcg -m 2048 -nographic -drive file=/var/lib/livemount/appliance.img,format=raw,if=virtio \\
      -nic user,hostfwd=tcp::2222-:22,hostfwd=tcp::8443-:8443,hostfwd=tcp::13260-:3260
TXT
