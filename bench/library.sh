#!/usr/bin/env bash
# Library benchmark: livemount's dedup library against restic, borg and casync on a real Debian 12 disk image.
#
# What it measures, in one run, on the same two images (a full disk and an incremental version of it):
#   - ingest time of the full image and of the incremental, restore time of the incremental, stored bytes
#     after each (du -sb of the repository), for livemount (release build) and each peer at its defaults;
#   - the machine's single-core BLAKE3 and zstd level-3 throughput on the corpus data (the ceiling for ingest);
#   - a chunk-size sweep of the library: dedup ratio against cold random-read latency.
# It prints a table, the ratios against the goals, and writes everything as JSON under the cache folder.
#
# Usage:  sudo bench/library.sh          (root: debootstrap, loop mounts and dropping the page cache)
# Env:
#   BENCH_CACHE=DIR        corpus and results folder (default /var/cache/livemount-bench); images are reused
#   BENCH_SKIP_PEERS=1     skip restic, borg and casync
#   BENCH_SKIP_SWEEP=1     skip the chunk-size sweep
#   BENCH_SKIP_LIMITS=1    skip the BLAKE3/zstd throughput figures
#   BENCH_SWEEP_SIZES="64K 256K 1M 4M"   chunk sizes of the sweep
#   BENCH_READS=300        random 4 KiB reads per chunk size
#   BENCH_IMAGE_SIZE=4G    size of the disk image (only when it is built)
#   BENCH_REBUILD=1        throw the cached images away and build them again
#   RESTIC_PASSWORD        restic's repository password (default: a fixed benchmark password)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
IMAGE_SIZE=${BENCH_IMAGE_SIZE:-4G}
SWEEP_SIZES=${BENCH_SWEEP_SIZES:-64K 256K 1M 4M}
READS=${BENCH_READS:-300}
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
# Enough packages that the root file system holds well over 1 GiB: a kernel and its modules, a compiler tool
# chain, python, and the usual server bits. debootstrap leaves the downloaded .debs in /var/cache/apt/archives,
# which is realistic too (already-compressed data that nothing dedups or compresses further).
PACKAGES=linux-image-amd64,systemd-sysv,openssh-server,build-essential,python3,git,vim,man-db,locales,curl,ca-certificates,rsync,less,firmware-linux-free

FULL=$CACHE/full.img
INCR=$CACHE/incr.img
RESULTS=$CACHE/results.json
WORK=""        # temporary repositories and restores of this run (removed on exit)
MNT=""         # a loop mount in progress (undone on exit)
LOOPDEV=""

export RESTIC_PASSWORD=${RESTIC_PASSWORD:-livemount-bench}
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    if [[ -n $MNT ]] && mountpoint -q "$MNT"; then umount "$MNT" || true; fi
    if [[ -n $LOOPDEV ]]; then losetup -d "$LOOPDEV" 2>/dev/null || true; fi
    [[ -n $MNT ]] && rmdir "$MNT" 2>/dev/null || true
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Cold-cache timings only mean something if the page cache really is empty; without the permission the figures
# are warm and the report says so.
CACHE_DROPS=yes
drop_caches() {
    sync
    if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        if [[ $CACHE_DROPS == yes ]]; then
            echo "bench: cannot drop the page cache (not root?): timings below are WARM" >&2
        fi
        CACHE_DROPS=no
    fi
}

now() { date +%s.%N; }

# Runs "$@" after dropping the page cache, with its output in $WORK/logs; sets ELAPSED (seconds, wall clock).
ELAPSED=0
timed() {
    local name=$1; shift
    drop_caches
    local t0 t1
    t0=$(now)
    if ! "$@" > "$WORK/logs/$name.out" 2> "$WORK/logs/$name.err"; then
        cat "$WORK/logs/$name.err" >&2
        die "$name: '$*' failed"
    fi
    t1=$(now)
    ELAPSED=$(echo "$t1 - $t0" | bc -l)
    printf '   %-28s %8.2f s\n' "$name" "$ELAPSED" >&2
}

du_bytes() { du -sb "$1" | cut -f1; }

# ---------------------------------------------------------------------------------------------------------
# Tools. Idempotent: only what is missing is installed, so the script runs as is on a fresh Debian 12.
# ---------------------------------------------------------------------------------------------------------
ensure_tools() {
    local missing=() cmd pkg
    for pair in debootstrap:debootstrap restic:restic borg:borgbackup casync:casync sfdisk:fdisk \
                mkfs.ext4:e2fsprogs python3:python3 bc:bc cmp:diffutils losetup:mount; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" > /dev/null || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    command -v cargo > /dev/null || die "cargo is needed to build livemount (install Rust first)"
}

# ---------------------------------------------------------------------------------------------------------
# Corpus: a GPT disk with one ext4 partition holding a debootstrapped Debian 12, and an incremental version.
# ---------------------------------------------------------------------------------------------------------

# Start and size in bytes of the first partition of image $1.
partition_of() {
    sfdisk -J "$1" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
sector = t.get("sectorsize", 512)
p = t["partitions"][0]
print(p["start"] * sector, p["size"] * sector)'
}

build_full_image() {
    local rootfs=$CACHE/rootfs
    if [[ ! -e $rootfs/.debootstrap-done ]]; then
        log "debootstrap $SUITE into $rootfs (several minutes)"
        rm -rf "$rootfs"
        debootstrap --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
        touch "$rootfs/.debootstrap-done"
    fi
    du -sh --exclude=proc --exclude=sys "$rootfs" >&2

    log "building $FULL ($IMAGE_SIZE, GPT, one ext4 partition)"
    local tmp=$FULL.tmp part=$CACHE/part.tmp
    rm -f "$tmp" "$part"
    truncate -s "$IMAGE_SIZE" "$tmp"
    # One Linux partition from 1 MiB to the end (sfdisk leaves room for the backup GPT).
    echo 'label: gpt
start=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root' | sfdisk -q "$tmp"
    local start size
    read -r start size < <(partition_of "$tmp")
    # mke2fs -d copies the tree with owners, modes, xattrs and hard links, with no mount needed.
    truncate -s "$size" "$part"
    mkfs.ext4 -q -F -L debian-root -d "$rootfs" "$part"
    dd if="$part" of="$tmp" bs=1M seek="$start" oflag=seek_bytes conv=notrunc,sparse status=none
    rm -f "$part"
    mv "$tmp" "$FULL"
}

# The incremental: what a week of use does to a server. New files (copies of existing data at other places in
# the file system, which only content-defined chunking can match, plus fresh random data), files modified in
# place and rewritten, files deleted.
build_incremental_image() {
    log "building $INCR from $FULL (about 150 MiB of changes through a loop mount)"
    local tmp=$INCR.tmp start size
    rm -f "$tmp"
    cp --sparse=always --reflink=auto "$FULL" "$tmp"
    read -r start size < <(partition_of "$tmp")
    MNT=$(mktemp -d "$CACHE/mnt.XXXXXX")
    LOOPDEV=$(losetup -f --show -o "$start" --sizelimit "$size" "$tmp")
    mount "$LOOPDEV" "$MNT"

    # ~50-80 MiB of copies: docs and a slice of the kernel modules, as if a package set were installed again.
    mkdir -p "$MNT/srv/copies"
    cp -a "$MNT/usr/share/doc" "$MNT/srv/copies/doc"
    local kdir
    kdir=$(ls -d "$MNT"/usr/lib/modules/*/kernel/drivers | head -1)
    cp -a "$kdir/net" "$MNT/srv/copies/net-modules"
    # ~64 MiB of new data nothing has seen: 16 files of 4 MiB.
    mkdir -p "$MNT/var/lib/appdata"
    for i in $(seq 1 16); do head -c 4M /dev/urandom > "$MNT/var/lib/appdata/blob$i.bin"; done
    # Logs and a database-like file grow.
    for i in $(seq 1 2000); do echo "$(date -Is) bench[$i]: event $i ok"; done >> "$MNT/var/log/syslog"
    head -c 8M /dev/urandom | base64 > "$MNT/var/log/app.log"
    # In-place changes inside large existing files (same inode, same blocks): 4 KiB here and there.
    local f
    for f in $(find "$MNT/usr/lib" -type f -size +2M | sort | head -8); do
        for off in 1 7 13; do
            dd if=/dev/urandom of="$f" bs=4k seek=$off count=1 conv=notrunc status=none
        done
    done
    # Rewritten configuration (new inode, new blocks).
    sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin no/' "$MNT/etc/ssh/sshd_config"
    echo "bench-host" > "$MNT/etc/hostname"
    # Deleted: a package cache clean-up and some locales.
    rm -f "$MNT"/var/cache/apt/archives/*.deb
    rm -rf "$MNT"/usr/share/locale/[a-m]*
    rm -rf "$MNT"/usr/share/man/[a-k]*
    sync
    df -h "$MNT" >&2
    umount "$MNT"; rmdir "$MNT"; MNT=""
    losetup -d "$LOOPDEV"; LOOPDEV=""
    mv "$tmp" "$INCR"
}

prepare_corpus() {
    mkdir -p "$CACHE"
    if [[ ${BENCH_REBUILD:-0} == 1 ]]; then rm -f "$FULL" "$INCR"; fi
    if [[ ! -f $FULL ]]; then rm -f "$INCR"; build_full_image; fi
    [[ -f $INCR ]] || build_incremental_image
    log "corpus"
    ls -ls "$FULL" "$INCR" >&2
}

ensure_tools
prepare_corpus
[[ ${BENCH_ONLY_CORPUS:-0} == 1 ]] && exit 0
