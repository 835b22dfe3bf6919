#!/usr/bin/env bash
# FUSE benchmark: random 4 KiB reads of non-zero data through the FUSE file of a livemount live mount, side by
# side with `restic mount`, `borg mount` and `casync mount` reading the same offsets of the same disk image.
#
# What it measures, in one run, on full.img of the library benchmark's corpus (bench/library.sh):
#   - N random 4 KiB-aligned offsets inside allocated, non-zero 4 KiB blocks of the raw image (SEEK_DATA ranges,
#     all-zero blocks rejected), drawn once from a fixed seed: the same offsets, in the same random order, for
#     every tool;
#   - per tool: the image goes into a fresh repository of the tool, is exposed as a file through the tool's
#     FUSE mount, the page cache is dropped, then each offset is read once (cold) and then once more (warm),
#     one 4 KiB read at a time, opened with O_DIRECT (the kernel sends every read to the FUSE daemon; a tool
#     whose file refuses O_DIRECT is read with plain pread and the report says so). Every read is checked
#     against the raw image;
#     livemount        the FUSE file of a fresh read-write mount (mounts/<id>/disk0.img): nothing recalled yet,
#                      each read goes private store -> recall store -> recall of its chunk from the library;
#     livemount-view   the read-only file backups/<id>/disk0.img of the same daemon (straight from the library,
#                      no recall store), for comparison;
#     restic           `restic mount`, file snapshots/latest/<path of full.img>;
#     borg             `borg mount` (repository made with -e none), file <path of full.img>;
#     casync           `casync mount` of a directory-tree archive (.caidx) holding full.img (a hard link):
#                      casync exposes a blob index (.caibx) only as a block device through NBD (`casync
#                      mkdev`), which this kernel does not have, so the image goes into a directory archive;
#   - median, p90 and p99 latency (ms) cold and warm per tool, livemount's cold median/p99 against each peer and
#     against the goal (cold median <= 0.5 ms, p99 <= 2 ms); for livemount also the cold reads split into the
#     first touch of a chunk (a real recall) and later reads of an already recalled chunk;
#   - the share of the disk recalled by browsing one file: a fresh daemon and state, `livemount browse`, one
#     file of about 1 MiB read through the browsed root file system (BENCH_BROWSE_FILE), recalled chunks and
#     bytes (from `livemount mounts --json`) after the browse and after the read, against the disk's chunks
#     and allocated bytes.
#   - cold throughput through the FUSE file against the library's own restore of the same backup (restored
#     with the page cache dropped first, MiB/s of the disk's size): per case a fresh mount, the page cache
#     dropped, then fio on the mount's FUSE file, O_DIRECT, 16 reads in flight (libaio): 1 MiB sequential,
#     the whole file once (goal: at least 0.8x the restore), and 4 KiB random for BENCH_TIME seconds; then the
#     same case once more on the now partly recalled mount (warm, for reference). Every case's bytes are
#     checked: fio's verify is not usable on a read-only comparison, so after the cases the mount's file is
#     compared with full.img (cmp) where the cases read it.
# It cleans up everything it mounted and started, keeps the corpus, writes JSON under the cache folder and
# prints a table.
#
# Usage:  sudo bench/fuse.sh        (root: FUSE mounts, loop devices of browse, dropping the page cache)
# Env:
#   BENCH_CACHE=DIR         corpus and results folder (default /var/cache/livemount-bench); the corpus is built
#                           by bench/library.sh when full.img is missing
#   BENCH_N=500             random 4 KiB reads per pass
#   BENCH_SEED=42           seed of the offsets
#   BENCH_CHUNK_SIZE=SIZE   chunk size of livemount's library (default: the library's default); results then go
#                           to fuse-results-SIZE.json
#   BENCH_SKIP_PEERS=1      livemount only (no restic, borg, casync)
#   BENCH_SKIP_THROUGHPUT=1 no cold throughput cases (fio)
#   BENCH_TIME=10           seconds per fio case
#   BENCH_BROWSE_FILE=usr/bin/bash   file read through the browsed root file system (relative to its root)
#   BENCH_PASS_TIMEOUT=900  seconds one pass of reads may take before the run fails
#   BENCH_NO_BUILD=1        use target/release/livemount as it is instead of running cargo
#   BENCH_KEEP_WORK=1       keep the run's folder (repositories, logs, raw latencies) instead of removing it
#   RESTIC_PASSWORD         restic's repository password (default: a fixed benchmark password)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
N=${BENCH_N:-500}
SEED=${BENCH_SEED:-42}
CHUNK_SIZE=${BENCH_CHUNK_SIZE:-}
BROWSE_FILE=${BENCH_BROWSE_FILE:-usr/bin/bash}
PASS_TIMEOUT=${BENCH_PASS_TIMEOUT:-900}
T=${BENCH_TIME:-10}
FULL=$CACHE/full.img
RESULTS=$CACHE/fuse-results${CHUNK_SIZE:+-$CHUNK_SIZE}.json
LIVEMOUNT=$ROOT/target/release/livemount

WORK=""          # this run's repositories, mount points, logs (removed on exit)
DAEMON_PID=""    # the livemount daemon in service
LM_MOUNTS=()     # livemount mount ids to unmount
LM_BROWSE=""     # a livemount browse to undo
PEER_MNTS=()     # FUSE mount points of the peers
PEER_PIDS=()     # their foreground processes
LOAD_START=""
LM_LIB=""        # livemount's library: $WORK/livemount-lib

export RESTIC_PASSWORD=${RESTIC_PASSWORD:-livemount-bench}
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

# ---------------------------------------------------------------------------------------------------------
# Clean-up: whatever was mounted or started, in reverse order of dependence. Never fails.
# ---------------------------------------------------------------------------------------------------------
unmount_fuse() {  # unmount_fuse DIR: a FUSE mount point, lazily if it is busy
    local dir=$1
    mountpoint -q "$dir" 2>/dev/null || return 0
    fusermount -u "$dir" 2>/dev/null || umount "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null || true
}

stop_daemon() {
    local id
    if [[ -n $LM_BROWSE ]]; then
        timeout 120 "$LIVEMOUNT" --library "$WORK/livemount-lib" --api "$WORK/api.sock" unbrowse "$LM_BROWSE" > /dev/null 2>&1 \
            || echo "bench: unbrowse $LM_BROWSE failed" >&2
        LM_BROWSE=""
    fi
    for id in "${LM_MOUNTS[@]}"; do
        timeout 120 "$LIVEMOUNT" --library "$WORK/livemount-lib" --api "$WORK/api.sock" unmount "$id" > /dev/null 2>&1 \
            || echo "bench: unmount $id failed" >&2
    done
    LM_MOUNTS=()
    if [[ -n $DAEMON_PID ]]; then
        stop_pid "$DAEMON_PID" TERM
        DAEMON_PID=""
    fi
    # A daemon that died leaves its FUSE root (and a browse its file systems and loop devices) behind.
    if [[ -n $WORK ]]; then
        local m
        for m in $(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
        local dev
        for dev in $(losetup -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 {print $1}'); do
            losetup -d "$dev" 2>/dev/null || true
        done
    fi
}

stop_peers() {
    local m p
    for m in "${PEER_MNTS[@]}"; do unmount_fuse "$m"; done
    for p in "${PEER_PIDS[@]}"; do stop_pid "$p" INT; done
    PEER_MNTS=() PEER_PIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_peers
    [[ -n $WORK ]] && stop_daemon
    remove_work
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CACHE_DROPS=yes

# ---------------------------------------------------------------------------------------------------------
# Tools, corpus, build.
# ---------------------------------------------------------------------------------------------------------
ensure_tools() {
    local need=(python3:python3 bc:bc fusermount:fuse losetup:mount fio:fio cmp:diffutils)
    [[ ${BENCH_SKIP_PEERS:-0} == 1 ]] || need+=(restic:restic borg:borgbackup casync:casync)
    install_missing "${need[@]}"
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is needed"
    [[ $(id -u) == 0 ]] || die "run as root (FUSE mounts of the peers, browse's loop devices, dropping the page cache)"
}

# ---------------------------------------------------------------------------------------------------------
# The reads: offsets drawn once (report.py fuse-offsets), one timed pass over a file (report.py fuse-reads).
# ---------------------------------------------------------------------------------------------------------
# Cold then warm pass over file $2 for tool $1 (the page cache dropped just before the cold pass).
passes() {
    local tool=$1 file=$2 pass
    drop_caches
    for pass in cold warm; do
        timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" fuse-reads "$file" "$WORK/offsets" "$WORK/reads-$tool-$pass.json" \
            || die "$tool: $pass pass over $file failed or took over ${PASS_TIMEOUT}s"
        python3 "$REPORT_PY" fuse-pass "$WORK/reads-$tool-$pass.json" "$tool $pass" >&2
    done
}

# ---------------------------------------------------------------------------------------------------------
# livemount: library, daemon, a fresh mount; then the library view of the same backup.
# ---------------------------------------------------------------------------------------------------------
start_daemon() {
    local state=$1 fuse=$2
    mkdir -p "$state" "$fuse"
    # Builds with an iSCSI portal and an HTTP server listen on 0.0.0.0:3260 and :8080 by default: keep this
    # daemon on loopback ports nobody uses, so it never collides with another daemon of the machine.
    local extra=()
    if "$LIVEMOUNT" serve --help 2>/dev/null | grep -q -- --portal; then
        extra+=(--portal "127.0.0.1:$(free_port)")
    fi
    if "$LIVEMOUNT" serve --help 2>/dev/null | grep -q -- --http; then
        extra+=(--http "127.0.0.1:$(free_port)")
    fi
    serve_daemon --state-dir "$state" --fuse-root "$fuse" "${extra[@]}"
}

bench_livemount() {
    local t0 out id file backup
    log "livemount (chunk size ${CHUNK_SIZE:-default})"
    "$LIVEMOUNT" --library "$WORK/livemount-lib" library init ${CHUNK_SIZE:+--chunk-size "$CHUNK_SIZE"} \
        > "$WORK/logs/livemount-init.out"
    t0=$(now)
    "$LIVEMOUNT" --library "$WORK/livemount-lib" --json backup create "$FULL" --name full \
        > "$WORK/livemount-backup.json" 2> "$WORK/logs/livemount-backup.err" \
        || { cat "$WORK/logs/livemount-backup.err" >&2; die "livemount backup create failed"; }
    rec livemount.ingest_s "$(since "$t0")"
    rec livemount.repo_bytes "$(du_bytes "$WORK/livemount-lib")"
    backup=$(json_get "$WORK/livemount-backup.json" id)
    json_get "$WORK/livemount-lib/backups/$backup/manifest.json" disks 0 chunk_size > "$WORK/chunk_size"
    echo "   backup $backup, chunk size $(cat "$WORK/chunk_size") bytes" >&2

    start_daemon "$WORK/state" "$WORK/fs"
    t0=$(now)
    lm --json mount full > "$WORK/livemount-mount.json" || die "livemount mount failed"
    id=$(json_get "$WORK/livemount-mount.json" id)
    LM_MOUNTS+=("$id")
    file=$(json_get "$WORK/livemount-mount.json" disks 0 fuse_path)
    wait_for "$file" 30 || die "livemount: $file did not appear"
    rec livemount.mount_s "$(since "$t0")"
    echo "   mount $id: $file" >&2
    passes livemount "$file"
    mount_counters "$id" > "$WORK/livemount-counters.txt"
    sed 's/^/   /' "$WORK/livemount-counters.txt" | grep -E 'recalled|chunks_total' >&2

    log "livemount-view (backups/$backup/disk0.img: straight from the library, no recall store)"
    file=$WORK/fs/backups/$backup/disk0.img
    t0=$(now)
    wait_for "$file" 30 || die "livemount: $file did not appear"
    rec livemount-view.mount_s "$(since "$t0")"
    passes livemount-view "$file"
    stop_daemon
}

# Cold throughput through the FUSE file of fresh mounts (fio, 16 in flight) beside the library's restore.
bench_throughput() {
    local t0 case rw bs id file pass
    log "throughput: the library's restore of the backup, the page cache dropped first"
    drop_caches
    t0=$(now)
    "$LIVEMOUNT" --library "$WORK/livemount-lib" backup restore full "$WORK/restored.img" > "$WORK/logs/restore.out" \
        2>&1 || { cat "$WORK/logs/restore.out" >&2; die "livemount backup restore failed"; }
    rec throughput.restore_s "$(since "$t0")"
    rec throughput.disk_size "$(stat -c %s "$FULL")"
    rm -f "$WORK/restored.img"
    start_daemon "$WORK/state-tp" "$WORK/fs-tp"
    for case in seq1m:read:1M rand4k:randread:4k; do
        IFS=: read -r case rw bs <<< "$case"
        # Sequential: the whole file once (a second pass would read what the first recalled); random: BENCH_TIME.
        local how=(--runtime="$T" --time_based)
        [[ $rw == read ]] && how=(--runtime=600)
        log "throughput: $case through a fresh mount's FUSE file (fio, 16 in flight, ${T}s), cold then again"
        lm --json mount full > "$WORK/mount-$case.json" || die "livemount mount failed"
        id=$(json_get "$WORK/mount-$case.json" id)
        LM_MOUNTS+=("$id")
        file=$(json_get "$WORK/mount-$case.json" disks 0 fuse_path)
        wait_for "$file" 30 || die "livemount: $file did not appear"
        drop_caches
        for pass in cold again; do
            fio --name="$case-$pass" --filename="$file" --rw="$rw" --bs="$bs" --direct=1 --ioengine=libaio \
                --iodepth=16 "${how[@]}" --randseed=42 --output-format=json \
                > "$WORK/fio-$case-$pass.json" 2> "$WORK/logs/fio-$case-$pass.err" \
                || { cat "$WORK/logs/fio-$case-$pass.err" >&2; die "fio $case $pass failed"; }
        done
        mount_counters "$id" | sed "s/^/throughput.$case./" >> "$WORK/figures"
        # What the cases read is the backup's content: the first 256 MiB of the file against full.img.
        cmp -n $((256 << 20)) "$file" "$FULL" || die "livemount: the FUSE file of mount $id differs from $FULL"
        drop_mount "$id"
    done
    stop_daemon
}

# Share of the disk recalled by browsing one file: fresh daemon and state, browse, read one file, counters.
bench_browse() {
    local t0 id root path size
    log "livemount browse: recall after reading one file ($BROWSE_FILE)"
    start_daemon "$WORK/state-browse" "$WORK/fs-browse"
    t0=$(now)
    lm --json browse full > "$WORK/browse.json" 2> "$WORK/logs/browse.err" \
        || { cat "$WORK/logs/browse.err" >&2; die "livemount browse failed"; }
    rec browse.browse_s "$(since "$t0")"
    id=$(json_get "$WORK/browse.json" id)
    LM_BROWSE=$id
    # The file system that holds the file (the root file system of the image).
    root=$(python3 "$REPORT_PY" browse-root "$WORK/browse.json" "$BROWSE_FILE")
    [[ -n $root ]] || die "browse: no browsed file system holds $BROWSE_FILE"
    mount_counters "$id" > "$WORK/browse-before.txt"
    path=$root/$BROWSE_FILE
    size=$(stat -L -c %s "$path")
    t0=$(now)
    cat "$path" > /dev/null
    rec browse.read_s "$(since "$t0")"
    rec browse.file_bytes "$size"
    # Same bytes as the tree the image was made from, when that tree is still in the cache.
    if [[ -f $CACHE/rootfs/$BROWSE_FILE ]]; then
        cmp -s "$path" "$CACHE/rootfs/$BROWSE_FILE" && rec browse.file_identical 1 || rec browse.file_identical 0
    fi
    mount_counters "$id" > "$WORK/browse-after.txt"
    echo "   $path: $size bytes" >&2
    paste -d' ' "$WORK/browse-before.txt" "$WORK/browse-after.txt" | grep -E '^(recalled|chunks_total|bytes_recalled)' \
        | sed 's/^/   before -> after: /' >&2
    timeout 120 "$LIVEMOUNT" --library "$WORK/livemount-lib" --api "$WORK/api.sock" unbrowse "$id" > /dev/null \
        || die "unbrowse failed"
    LM_BROWSE=""
    stop_daemon
}

# ---------------------------------------------------------------------------------------------------------
# The peers. Each: repository of full.img (timed, du -sb), FUSE mount in the background, the passes, unmount.
# ---------------------------------------------------------------------------------------------------------
mount_peer() {  # mount_peer TOOL FILE_TO_WAIT_FOR CMD...: starts the mount, waits for the file
    local tool=$1 file=$2 t0 pid; shift 2
    t0=$(now)
    "$@" < /dev/null > "$WORK/logs/$tool-mount.log" 2>&1 &
    pid=$!
    PEER_PIDS+=("$pid")
    wait_for "$file" 600 "$pid" || { tail -20 "$WORK/logs/$tool-mount.log" >&2; die "$tool: $file did not appear"; }
    rec "$tool.mount_s" "$(since "$t0")"
}

ingest() {  # ingest TOOL CMD...
    local tool=$1 t0; shift
    t0=$(now)
    "$@" > "$WORK/logs/$tool-ingest.out" 2> "$WORK/logs/$tool-ingest.err" \
        || { cat "$WORK/logs/$tool-ingest.err" >&2; die "$tool: '$*' failed"; }
    sync
    rec "$tool.ingest_s" "$(since "$t0")"
}

# restic 0.14: repository format 2, zstd "auto", content-defined chunks of 512 KiB-8 MiB (1 MiB average).
bench_restic() {
    local repo=$WORK/restic-repo mnt=$WORK/mnt-restic
    local r=(restic -r "$repo" --cache-dir "$WORK/restic-cache" -q)
    log "restic $(restic version | cut -d' ' -f2)"
    "${r[@]}" init > /dev/null
    ingest restic "${r[@]}" backup "$FULL"
    rec restic.repo_bytes "$(du_bytes "$repo")"
    mkdir -p "$mnt"
    PEER_MNTS+=("$mnt")
    mount_peer restic "$mnt/snapshots/latest$FULL" "${r[@]}" mount "$mnt"
    passes restic "$mnt/snapshots/latest$FULL"
    stop_peers
}

# borg 1.2: buzhash chunks of 2 MiB on average, lz4; -e none (no passphrase). Foreground mount (-f).
bench_borg() {
    local repo=$WORK/borg-repo mnt=$WORK/mnt-borg
    export BORG_BASE_DIR=$WORK/borg-base
    log "borg $(borg --version | cut -d' ' -f2)"
    borg init -e none "$repo"
    ingest borg borg create "$repo::full" "$FULL"
    rec borg.repo_bytes "$(du_bytes "$repo")"
    mkdir -p "$mnt"
    PEER_MNTS+=("$mnt")
    mount_peer borg "$mnt${FULL}" borg mount -f "$repo::full" "$mnt"
    passes borg "$mnt$FULL"
    stop_peers
}

# casync: content-defined chunks of 16/64/256 KiB, zstd. A directory-tree archive (.caidx) of a folder that
# holds full.img as a hard link (no copy), because `casync mount` serves only directory trees; a blob index
# (.caibx) can only be exposed as a block device with `casync mkdev`, which needs NBD (absent here).
bench_casync() {
    local store=$WORK/casync-store tree=$WORK/casync-tree mnt=$WORK/mnt-casync
    log "casync $(casync --version | head -1 | awk '{print $2}') (directory archive .caidx holding full.img)"
    mkdir -p "$store" "$tree" "$mnt"
    ln "$FULL" "$tree/full.img" 2>/dev/null || cp --sparse=always --reflink=auto "$FULL" "$tree/full.img"
    ingest casync casync make --store="$store" "$WORK/full.caidx" "$tree"
    rec casync.repo_bytes "$(( $(du_bytes "$store") + $(stat -c %s "$WORK/full.caidx") ))"
    PEER_MNTS+=("$mnt")
    mount_peer casync "$mnt/full.img" casync mount --store="$store" "$WORK/full.caidx" "$mnt"
    passes casync "$mnt/full.img"
    stop_peers
}

# ---------------------------------------------------------------------------------------------------------
# Report: JSON under the cache folder and the table.
# ---------------------------------------------------------------------------------------------------------
report() {
    local versions
    versions="livemount $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [[ ${BENCH_SKIP_PEERS:-0} != 1 ]]; then
        versions+="; $(restic version | cut -d' ' -f1-2); $(borg --version); casync $(casync --version | head -1 | awk '{print $2}')"
    fi
    WORK="$WORK" RESULTS="$RESULTS" FULL="$FULL" N="$N" SEED="$SEED" CACHE_DROPS="$CACHE_DROPS" NPROC="$(nproc)" \
    VERSIONS="$versions" LOAD="$(load_span)" BROWSE_FILE="$BROWSE_FILE" \
    CHUNK_SIZE_ARG="${CHUNK_SIZE:-default}" python3 "$REPORT_PY" summary-fuse
}

main() {
    ensure_tools
    need_corpus
    build_livemount
    WORK=$(mktemp -d "$CACHE/fuse-run.XXXXXX")
    LM_LIB=$WORK/livemount-lib
    mkdir -p "$WORK/logs"
    : > "$WORK/figures"
    load_prologue
    log "drawing $N offsets (seed $SEED) from the data ranges of $FULL"
    python3 "$REPORT_PY" fuse-offsets "$FULL" "$N" "$SEED" "$WORK/offsets"
    bench_livemount
    if [[ ${BENCH_SKIP_PEERS:-0} != 1 ]]; then
        bench_restic
        bench_borg
        bench_casync
    fi
    bench_browse
    [[ ${BENCH_SKIP_THROUGHPUT:-0} == 1 ]] || bench_throughput
    report
}

main "$@"
