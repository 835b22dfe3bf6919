#!/usr/bin/env bash
# Library benchmark: livemount's dedup library against restic, borg and casync on a real Debian 12 disk image.
#
# What it measures, in one run, on the same two images (a full disk and an incremental version of it):
#   - ingest time of the full image and of the incremental, restore time of the incremental, stored bytes
#     after each (du -sb of the repository), for livemount (release build) and each peer at its defaults;
#   - this machine's limits, measured in the same run (dedup/examples/limits.rs, and dd): reading each image's
#     allocated bytes cold; BLAKE3, and BLAKE3 plus the library's codec, over them on all cores; writing the
#     incremental's allocated bytes with direct I/O (dd oflag=direct) and reading the library's packs cold;
#   - a chunk-size sweep of the library: dedup ratio against cold random-read latency.
# It prints a table, livemount's ratios against those limits and against restic's stored size (the goals),
# and writes everything as JSON under the cache folder.
#
# Usage:  sudo bench/library.sh          (root: debootstrap, loop mounts and dropping the page cache)
# Env:
#   BENCH_CACHE=DIR        corpus and results folder (default /var/cache/livemount-bench); images are reused
#   BENCH_SKIP_PEERS=1     skip restic, borg and casync
#   BENCH_PEERS="restic borg casync"   the peers to run (restic alone gives the stored-size goal)
#   BENCH_SKIP_SWEEP=1     skip the chunk-size sweep
#   BENCH_SKIP_LIMITS=1    skip the measurement of the limits (and the ratios against them)
#   BENCH_SWEEP_SIZES="64K 256K 1M 4M"   chunk sizes of the sweep
#   BENCH_READS=300        random 4 KiB reads per chunk size
#   BENCH_ROUNDS=3         rounds of livemount's full, incremental and restore (the best of each is reported)
#   BENCH_IMAGE_SIZE=4G    size of the disk image (only when it is built)
#   BENCH_MIRROR=URL       Debian mirror for debootstrap (default: the one this machine's apt sources use)
#   BENCH_REBUILD=1        throw the cached images away and build them again (the debootstrapped tree in
#                          BENCH_CACHE/rootfs is kept; delete it to debootstrap again)
#   BENCH_NO_BUILD=1       use the binaries already in target/release instead of running cargo
#   RESTIC_PASSWORD        restic's repository password (default: a fixed benchmark password)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
IMAGE_SIZE=${BENCH_IMAGE_SIZE:-4G}
SWEEP_SIZES=${BENCH_SWEEP_SIZES:-64K 256K 1M 4M}
READS=${BENCH_READS:-300}
# The machine is shared (steal time is common): livemount's times and the restore floor are the best of this
# many rounds, as the limits' CPU figures are the best of two.
ROUNDS=${BENCH_ROUNDS:-3}
MIRROR=${BENCH_MIRROR:-$("$ROOT/scripts/debian-mirror.sh")}   # the machine's own Debian mirror
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
LOAD_START=""

export RESTIC_PASSWORD=${RESTIC_PASSWORD:-livemount-bench}
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

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

# Runs "$@" after dropping the page cache, with its output in $WORK/logs; sets ELAPSED (seconds, wall clock,
# up to the end of a final sync).
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
    # Counted for every tool alike: what it wrote is on the disk (livemount fsyncs itself, the others not).
    sync
    t1=$(now)
    ELAPSED=$(echo "$t1 - $t0" | bc -l)
    printf '   %-28s %8.2f s   (load average %s)\n' "$name" "$ELAPSED" "$(cut -d' ' -f1 /proc/loadavg)" >&2
}

# ---------------------------------------------------------------------------------------------------------
# Tools. Idempotent: only what is missing is installed, so the script runs as is on a fresh Debian 12.
# ---------------------------------------------------------------------------------------------------------
ensure_tools() {
    install_missing debootstrap:debootstrap restic:restic borg:borgbackup casync:casync sfdisk:fdisk \
        mkfs.ext4:e2fsprogs python3:python3 bc:bc cmp:diffutils losetup:mount
    command -v cargo > /dev/null || die "cargo is needed to build livemount (install Rust first)"
}

# ---------------------------------------------------------------------------------------------------------
# Corpus: a GPT disk with one ext4 partition holding a debootstrapped Debian 12, and an incremental version.
# ---------------------------------------------------------------------------------------------------------

# Start and size in bytes of the first partition of image $1.
partition_of() { sfdisk -J "$1" | python3 "$REPORT_PY" partition-of; }

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

# ---------------------------------------------------------------------------------------------------------
# Builds. The release binary and the two example programs; run directly afterwards so cargo's start-up and
# freshness checks are never inside a timing.
# ---------------------------------------------------------------------------------------------------------
LIVEMOUNT=$ROOT/target/release/livemount
build() {
    if [[ ${BENCH_NO_BUILD:-0} == 1 ]]; then
        [[ -x $LIVEMOUNT && -x $ROOT/target/release/examples/random_read ]] || die "BENCH_NO_BUILD=1 but no binaries"
        return 0
    fi
    log "building livemount and the bench examples (release)"
    (cd "$ROOT" && cargo build --release -q -p appliance \
        && cargo build --release -q -p dedup --example limits --example random_read)
}

# ---------------------------------------------------------------------------------------------------------
# The machine's limits, in this run: what ingest and incremental ingest are judged against.
# ---------------------------------------------------------------------------------------------------------
run_limits() {
    local img
    for img in full incr; do
        log "limits on the $img image: cold read of its allocated bytes, hash and hash+codec on all cores"
        drop_caches
        "$ROOT/target/release/examples/limits" "$CACHE/$img.img" > "$WORK/limits-$img.json"
        cat "$WORK/limits-$img.json" >&2
    done
}

# The restore's floor, in this run: the library's packs read cold, and the incremental's allocated bytes
# written with direct I/O and made durable (what a restore must at least do).
# Measured in each round, the best of them kept (as the restore's own time is).
FLOOR_READ="" FLOOR_WRITE=""
run_restore_floor() {
    local lib=$1 bytes blocks
    log "restore floor: packs read cold, allocated bytes written with dd oflag=direct"
    timed floor-read-packs bash -c 'cat "$1"/packs/*.pack > /dev/null' _ "$lib"
    FLOOR_READ=$(least "$FLOOR_READ" "$ELAPSED")
    rec floor.read_packs_s "$FLOOR_READ"
    bytes=$(( $(stat -c %b "$INCR") * 512 ))
    blocks=$(( (bytes + (4 << 20) - 1) / (4 << 20) ))
    timed floor-write-direct dd if=/dev/zero of="$WORK/floor.img" bs=4M count="$blocks" oflag=direct conv=fsync status=none
    FLOOR_WRITE=$(least "$FLOOR_WRITE" "$ELAPSED")
    rec floor.write_s "$FLOOR_WRITE"
    rec floor.write_bytes "$(( blocks * (4 << 20) ))"
    rm -f "$WORK/floor.img"
}

# ---------------------------------------------------------------------------------------------------------
# The four tools. Each function: ingest full, ingest incremental, restore the incremental to a file; records
# times and du -sb of its repository after each ingest.
# ---------------------------------------------------------------------------------------------------------
bench_livemount() {
    local lib=$WORK/livemount-lib out=$WORK/restore-livemount.img round full="" incr="" restore=""
    log "livemount (default chunk size, $(nproc) cores; best of $ROUNDS rounds, each in a new library)"
    for round in $(seq 1 "$ROUNDS"); do
        rm -rf "$lib"
        "$LIVEMOUNT" --library "$lib" --json library init > "$WORK/logs/livemount-init.json"
        timed livemount-full "$LIVEMOUNT" --library "$lib" --json backup create "$FULL" --name full
        full=$(least "$full" "$ELAPSED")
        rec livemount.full_bytes "$(du_bytes "$lib")"
        cp "$WORK/logs/livemount-full.out" "$WORK/livemount-full.json"
        timed livemount-incr "$LIVEMOUNT" --library "$lib" --json backup create "$INCR" --name incr
        incr=$(least "$incr" "$ELAPSED")
        rec livemount.incr_bytes "$(du_bytes "$lib")"
        cp "$WORK/logs/livemount-incr.out" "$WORK/livemount-incr.json"
        timed livemount-restore "$LIVEMOUNT" --library "$lib" backup restore incr "$out"
        restore=$(least "$restore" "$ELAPSED")
        # The point of a restore: bit-identical, or the run fails.
        cmp "$INCR" "$out" || die "livemount restore of the incremental differs from $INCR"
        echo "   restore is identical to the source (cmp)" >&2
        rm -f "$out"
        [[ ${BENCH_SKIP_LIMITS:-0} == 1 ]] || run_restore_floor "$lib"
    done
    rec livemount.full_s "$full"; rec livemount.incr_s "$incr"; rec livemount.restore_s "$restore"
    "$LIVEMOUNT" --library "$lib" --json library stats > "$WORK/livemount-stats.json"
    timed livemount-verify "$LIVEMOUNT" --library "$lib" backup verify
    rec livemount.verify_s "$ELAPSED"
}

# The smaller of two times, the first possibly empty.
least() { if [[ -z $1 ]] || (( $(echo "$2 < $1" | bc -l) )); then echo "$2"; else echo "$1"; fi; }

# restic 0.14 defaults: repository format 2, compression "auto" (zstd), content-defined chunks of 512 KiB-8 MiB
# (1 MiB average), AES-256 + Poly1305 (encryption cannot be turned off; the password comes from RESTIC_PASSWORD).
# Its metadata cache goes into the run's folder so it is removed with the repository.
bench_restic() {
    local repo=$WORK/restic-repo dest=$WORK/restore-restic
    local r=(restic -r "$repo" --cache-dir "$WORK/restic-cache" -q)
    log "restic $(restic version | cut -d' ' -f2)"
    "${r[@]}" init > /dev/null
    timed restic-full "${r[@]}" backup "$FULL"
    rec restic.full_s "$ELAPSED"; rec restic.full_bytes "$(du_bytes "$repo")"
    timed restic-incr "${r[@]}" backup "$INCR"
    rec restic.incr_s "$ELAPSED"; rec restic.incr_bytes "$(du_bytes "$repo")"
    timed restic-restore "${r[@]}" restore latest --path "$INCR" --target "$dest"
    rec restic.restore_s "$ELAPSED"
    cmp "$INCR" "$dest$INCR" || die "restic restore differs from $INCR"
    rm -rf "$dest"
}

# borg 1.2 defaults: buzhash chunker (19,23,21,4095: 2 MiB average), lz4 compression; "-e none" because the
# default repokey mode asks for a passphrase. Cache, config and security folders go into the run's folder.
bench_borg() {
    local repo=$WORK/borg-repo dest=$WORK/restore-borg
    export BORG_BASE_DIR=$WORK/borg-base
    log "borg $(borg --version | cut -d' ' -f2)"
    borg init -e none "$repo"
    timed borg-full borg create "$repo::full" "$FULL"
    rec borg.full_s "$ELAPSED"; rec borg.full_bytes "$(du_bytes "$repo")"
    timed borg-incr borg create "$repo::incr" "$INCR"
    rec borg.incr_s "$ELAPSED"; rec borg.incr_bytes "$(du_bytes "$repo")"
    mkdir -p "$dest"
    # borg extract writes into the current folder, paths without their leading slash.
    timed borg-restore bash -c 'cd "$1" && borg extract "$2::incr"' _ "$dest" "$repo"
    rec borg.restore_s "$ELAPSED"
    cmp "$INCR" "$dest$INCR" || die "borg restore differs from $INCR"
    rm -rf "$dest"
}

# casync defaults: content-defined chunks of 16/64/256 KiB (min/avg/max), SHA-512/256 digests, zstd
# compression (Debian's build), a chunk store of .cacnk files.
bench_casync() {
    local store=$WORK/casync-store dest=$WORK/restore-casync.img
    log "casync"
    mkdir -p "$store"
    timed casync-full casync make --store="$store" "$WORK/full.caibx" "$FULL"
    rec casync.full_s "$ELAPSED"; rec casync.full_bytes "$(du_bytes "$store")"
    timed casync-incr casync make --store="$store" "$WORK/incr.caibx" "$INCR"
    rec casync.incr_s "$ELAPSED"; rec casync.incr_bytes "$(du_bytes "$store")"
    timed casync-restore casync extract --store="$store" "$WORK/incr.caibx" "$dest"
    rec casync.restore_s "$ELAPSED"
    cmp "$INCR" "$dest" || die "casync restore differs from $INCR"
    rm -f "$dest"
}

# ---------------------------------------------------------------------------------------------------------
# Chunk-size sweep: dedup and compression against cold random-read latency, full + incremental in each.
# ---------------------------------------------------------------------------------------------------------
bench_sweep() {
    local cs lib
    for cs in $SWEEP_SIZES; do
        lib=$WORK/sweep-$cs
        log "sweep: chunk size $cs"
        "$LIVEMOUNT" --library "$lib" library init --chunk-size "$cs" > /dev/null
        timed "sweep-$cs-full" "$LIVEMOUNT" --library "$lib" --json backup create "$FULL" --name full
        rec "sweep.$cs.full_s" "$ELAPSED"
        timed "sweep-$cs-incr" "$LIVEMOUNT" --library "$lib" --json backup create "$INCR" --name incr
        rec "sweep.$cs.incr_s" "$ELAPSED"
        "$LIVEMOUNT" --library "$lib" --json library stats > "$WORK/sweep-$cs-stats.json"
        rec "sweep.$cs.du_bytes" "$(du_bytes "$lib")"
        "$ROOT/target/release/examples/random_read" "$lib" incr "$READS" > "$WORK/sweep-$cs-read.json"
        cat "$WORK/sweep-$cs-read.json" >&2
        # Each library is several hundred MiB; keep only its figures.
        rm -rf "$lib"
    done
}

# ---------------------------------------------------------------------------------------------------------
# Report: one JSON document (under the cache folder) and the tables.
# ---------------------------------------------------------------------------------------------------------
report() {
    local versions
    versions="livemount $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); $(restic version | cut -d' ' -f1-2);"
    versions+=" $(borg --version); casync $(casync --version | head -1 | awk '{print $2}')"
    WORK="$WORK" RESULTS="$RESULTS" FULL="$FULL" INCR="$INCR" CACHE_DROPS="$CACHE_DROPS" \
    SWEEP_SIZES="$SWEEP_SIZES" NPROC="$(nproc)" VERSIONS="$versions" \
    LOAD="$(load_span)" python3 "$REPORT_PY" summary-library
}

main() {
    ensure_tools
    prepare_corpus
    [[ ${BENCH_ONLY_CORPUS:-0} == 1 ]] && return 0
    build
    WORK=$(mktemp -d "$CACHE/run.XXXXXX")
    mkdir -p "$WORK/logs"
    : > "$WORK/figures"
    load_prologue
    drop_caches
    [[ ${BENCH_SKIP_LIMITS:-0} == 1 ]] || run_limits
    bench_livemount
    if [[ ${BENCH_SKIP_PEERS:-0} != 1 ]]; then
        local peer
        for peer in ${BENCH_PEERS:-restic borg casync}; do "bench_$peer"; done
    fi
    [[ ${BENCH_SKIP_SWEEP:-0} == 1 ]] || bench_sweep
    report
}

main "$@"
