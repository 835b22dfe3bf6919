#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: build livemount, create the default library, make a sample disk
# image (a real GPT-partitioned ext4 image with files), back it up, verify it and show it.
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
