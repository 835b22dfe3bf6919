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
#   BENCH_BROWSE_FILE=usr/bin/bash   file read through the browsed root file system (relative to its root)
#   BENCH_PASS_TIMEOUT=900  seconds one pass of reads may take before the run fails
#   BENCH_NO_BUILD=1        use target/release/livemount as it is instead of running cargo
#   BENCH_KEEP_WORK=1       keep the run's folder (repositories, logs, raw latencies) instead of removing it
#   RESTIC_PASSWORD         restic's repository password (default: a fixed benchmark password)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
N=${BENCH_N:-500}
SEED=${BENCH_SEED:-42}
CHUNK_SIZE=${BENCH_CHUNK_SIZE:-}
BROWSE_FILE=${BENCH_BROWSE_FILE:-usr/bin/bash}
PASS_TIMEOUT=${BENCH_PASS_TIMEOUT:-900}
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

export RESTIC_PASSWORD=${RESTIC_PASSWORD:-livemount-bench}
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

log() { printf '\n== %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------------------
# Clean-up: whatever was mounted or started, in reverse order of dependence. Never fails.
# ---------------------------------------------------------------------------------------------------------
lm() { "$LIVEMOUNT" --library "$WORK/livemount-lib" --api "$WORK/api.sock" "$@"; }


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

du_bytes() { du -sb "$1" | cut -f1; }


# Waits until path $1 exists (a file of a FUSE mount that is coming up), at most $2 seconds, while process $3
# lives.
wait_for() {
    local path=$1 limit=$2 pid=${3:-} t0
    t0=$(now)
    until [[ -e $path ]]; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        (( $(echo "$(since "$t0") > $limit" | bc -l) )) && return 1
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------------------------------------
# Tools, corpus, build.
# ---------------------------------------------------------------------------------------------------------
ensure_tools() {
    local need=(python3:python3 bc:bc fusermount:fuse losetup:mount)
    [[ ${BENCH_SKIP_PEERS:-0} == 1 ]] || need+=(restic:restic borg:borgbackup casync:casync)
    install_missing "${need[@]}"
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is needed"
    [[ $(id -u) == 0 ]] || die "run as root (FUSE mounts of the peers, browse's loop devices, dropping the page cache)"
}



# ---------------------------------------------------------------------------------------------------------
# The two Python helpers: drawing the offsets, and one timed pass of reads over a file.
# ---------------------------------------------------------------------------------------------------------
write_helpers() {
    # offsets.py IMAGE N SEED OUT: N distinct 4 KiB-aligned offsets of non-zero 4 KiB blocks inside the
    # image's data ranges (SEEK_DATA/SEEK_HOLE), in random order; OUT gets "offset digest" lines.
    cat > "$WORK/offsets.py" <<'PY'
import bisect, hashlib, os, random, sys

image, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
B = 4096
fd = os.open(image, os.O_RDONLY)
size = os.fstat(fd).st_size
ranges, pos = [], 0            # (first block, blocks) of each data range, whole blocks only
while pos < size:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:            # ENXIO: no data after pos
        break
    end = os.lseek(fd, start, os.SEEK_HOLE)
    first, last = -(-start // B), end // B
    if last > first:
        ranges.append((first, last - first))
    pos = end
cum = [0]
for _, count in ranges:
    cum.append(cum[-1] + count)
total = cum[-1]
if total == 0:
    sys.exit("no data in " + image)
rng = random.Random(seed)
chosen, seen, zero, tries = [], set(), 0, 0
while len(chosen) < n:
    tries += 1
    if tries > 100 * n:
        sys.exit(f"cannot find {n} non-zero blocks in {image}")
    k = rng.randrange(total)
    i = bisect.bisect_right(cum, k) - 1
    block = ranges[i][0] + (k - cum[i])
    if block in seen:
        continue
    seen.add(block)
    data = os.pread(fd, B, block * B)
    if data.count(0) == len(data):
        zero += 1
        continue
    chosen.append((block * B, hashlib.blake2b(data, digest_size=16).hexdigest()))
with open(out, "w") as f:
    for off, digest in chosen:
        f.write(f"{off} {digest}\n")
print(f"{len(chosen)} offsets from {len(ranges)} data ranges ({total * B / 2**20:,.0f} MiB of whole data "
      f"blocks); {zero} all-zero blocks rejected", file=sys.stderr)
PY

    # reads.py FILE OFFSETS OUT: one pass, one 4 KiB read per offset in the file's order, timed one by one
    # (perf_counter_ns around the read call only), each checked against the raw image's digest. O_DIRECT with
    # an aligned buffer if the file system takes it, else plain pread.
    cat > "$WORK/reads.py" <<'PY'
import errno, hashlib, json, mmap, os, sys, time

path, offsets, out = sys.argv[1], sys.argv[2], sys.argv[3]
B = 4096
items = [(int(a), b) for a, b in (line.split() for line in open(offsets))]
direct = True
try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
except OSError as e:
    if e.errno != errno.EINVAL:
        raise
    direct, fd = False, os.open(path, os.O_RDONLY)
buf = mmap.mmap(-1, B)          # page-aligned, as O_DIRECT wants
lat, bad = [], []
for off, digest in items:
    while True:
        t0 = time.perf_counter_ns()
        try:
            n = os.preadv(fd, [buf], off)
        except OSError as e:
            if direct and e.errno == errno.EINVAL:      # O_DIRECT accepted at open, refused at read
                os.close(fd)
                direct, fd = False, os.open(path, os.O_RDONLY)
                continue
            raise
        t1 = time.perf_counter_ns()
        break
    lat.append(t1 - t0)
    if n != B or hashlib.blake2b(buf[:n], digest_size=16).hexdigest() != digest:
        bad.append(off)
os.close(fd)
json.dump({"direct": direct, "lat_ns": lat, "mismatches": bad}, open(out, "w"))
if bad:
    print(f"{path}: {len(bad)} reads differ from the raw image (first at offset {bad[0]})", file=sys.stderr)
PY
}

# Cold then warm pass over file $2 for tool $1 (the page cache dropped just before the cold pass).
passes() {
    local tool=$1 file=$2 pass
    drop_caches
    for pass in cold warm; do
        timeout -k 10 "$PASS_TIMEOUT" python3 "$WORK/reads.py" "$file" "$WORK/offsets" "$WORK/reads-$tool-$pass.json" \
            || die "$tool: $pass pass over $file failed or took over ${PASS_TIMEOUT}s"
        python3 - "$WORK/reads-$tool-$pass.json" "$tool $pass" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
s = sorted(r["lat_ns"])
p = lambda q: s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] / 1e6
print(f"   {sys.argv[2]:<22} median {p(50):8.3f} ms  p90 {p(90):8.3f} ms  p99 {p(99):8.3f} ms  "
      f"({'O_DIRECT' if r['direct'] else 'pread'}, {len(r['mismatches'])} mismatches)")
PY
    done
}

# ---------------------------------------------------------------------------------------------------------
# livemount: library, daemon, a fresh mount; then the library view of the same backup.
# ---------------------------------------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_daemon() {
    local state=$1 fuse=$2 i
    mkdir -p "$state" "$fuse"
    rm -f "$WORK/api.sock"
    # Builds with an iSCSI portal and an HTTP server listen on 0.0.0.0:3260 and :8080 by default: keep this
    # daemon on loopback ports nobody uses, so it never collides with another daemon of the machine.
    local extra=()
    if "$LIVEMOUNT" serve --help 2>/dev/null | grep -q -- --portal; then
        extra+=(--portal "127.0.0.1:$(free_port)")
    fi
    if "$LIVEMOUNT" serve --help 2>/dev/null | grep -q -- --http; then
        extra+=(--http "127.0.0.1:$(free_port)")
    fi
    "$LIVEMOUNT" --library "$WORK/livemount-lib" --api "$WORK/api.sock" serve --state-dir "$state" \
        --fuse-root "$fuse" "${extra[@]}" < /dev/null >> "$WORK/logs/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for i in $(seq 1 600); do
        if [[ -S $WORK/api.sock ]] && lm --json mounts > /dev/null 2>&1; then return 0; fi
        kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$WORK/logs/daemon.log" >&2; die "the daemon exited"; }
        sleep 0.05
    done
    tail -20 "$WORK/logs/daemon.log" >&2
    die "the daemon did not come up in 30 s"
}

# Counters of livemount mount $1 as "KEY=VALUE" lines, summed over its disks.
mount_counters() {
    lm --json mounts | python3 -c '
import json, sys
mid = sys.argv[1]
for m in json.load(sys.stdin):
    if m["id"] == mid:
        tot = {}
        for d in m["disks"]:
            for k, v in d["counters"].items():
                tot[k] = tot.get(k, 0) + v
        for k, v in tot.items():
            print(f"{k}={v}")
        break
else:
    sys.exit("mount " + mid + " is not listed")' "$1"
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
    backup=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/livemount-backup.json")
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["chunk_size"])' \
        "$WORK/livemount-lib/backups/$backup/manifest.json" > "$WORK/chunk_size"
    echo "   backup $backup, chunk size $(cat "$WORK/chunk_size") bytes" >&2

    start_daemon "$WORK/state" "$WORK/fs"
    t0=$(now)
    lm --json mount full > "$WORK/livemount-mount.json" || die "livemount mount failed"
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/livemount-mount.json")
    LM_MOUNTS+=("$id")
    file=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"][0]["fuse_path"])' \
        "$WORK/livemount-mount.json")
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

# Share of the disk recalled by browsing one file: fresh daemon and state, browse, read one file, counters.
bench_browse() {
    local t0 id root path size
    log "livemount browse: recall after reading one file ($BROWSE_FILE)"
    start_daemon "$WORK/state-browse" "$WORK/fs-browse"
    t0=$(now)
    lm --json browse full > "$WORK/browse.json" 2> "$WORK/logs/browse.err" \
        || { cat "$WORK/logs/browse.err" >&2; die "livemount browse failed"; }
    rec browse.browse_s "$(since "$t0")"
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/browse.json")
    LM_BROWSE=$id
    # The file system that holds the file (the root file system of the image).
    root=$(python3 -c '
import json, os, sys
b = json.load(open(sys.argv[1]))["browse"]
for fs in b["filesystems"]:
    if os.path.isfile(os.path.join(fs["path"], sys.argv[2])):
        print(fs["path"]); break' "$WORK/browse.json" "$BROWSE_FILE")
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
    VERSIONS="$versions" LOAD="$LOAD_START -> $(cut -d' ' -f1 /proc/loadavg)" BROWSE_FILE="$BROWSE_FILE" \
    CHUNK_SIZE_ARG="${CHUNK_SIZE:-default}" python3 - <<'PY'
import json, os, time

env = os.environ
work = env["WORK"]
MiB = 1 << 20
GOAL_MEDIAN, GOAL_P99 = 0.5, 2.0

def load(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) else None

def kv(name):
    p = os.path.join(work, name)
    if not os.path.exists(p):
        return None
    return {k: int(v) for k, v in (l.strip().split("=", 1) for l in open(p) if "=" in l)}

figs = {}
for line in open(os.path.join(work, "figures")):
    k, v = line.strip().split("=", 1)
    figs[k] = float(v)

def stats(ns):
    s = sorted(ns)
    if not s:
        return None
    p = lambda q: s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] / 1e6
    return {"reads": len(s), "median_ms": p(50), "p90_ms": p(90), "p99_ms": p(99), "max_ms": s[-1] / 1e6,
            "mean_ms": sum(s) / len(s) / 1e6}

offsets = [int(l.split()[0]) for l in open(os.path.join(work, "offsets"))]
chunk_size = int(open(os.path.join(work, "chunk_size")).read())
st = os.stat(env["FULL"])
res = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "cores": int(env["NPROC"]),
    "versions": env["VERSIONS"],
    "cold_cache": env["CACHE_DROPS"] == "yes",
    "load_average": env["LOAD"],
    "image": {"path": env["FULL"], "size": st.st_size, "allocated": st.st_blocks * 512},
    "reads": int(env["N"]), "seed": int(env["SEED"]), "read_size": 4096,
    "livemount_chunk_size": chunk_size, "livemount_chunk_size_arg": env["CHUNK_SIZE_ARG"],
    "goal": {"cold_median_ms": GOAL_MEDIAN, "cold_p99_ms": GOAL_P99},
    "tools": {},
}
for tool in ["livemount", "livemount-view", "restic", "borg", "casync"]:
    cold, warm = load(f"reads-{tool}-cold.json"), load(f"reads-{tool}-warm.json")
    if not cold:
        continue
    t = {k.split(".", 1)[1]: v for k, v in figs.items() if k.startswith(tool + ".")}
    t.update({"access": "O_DIRECT" if cold["direct"] else "pread",
              "cold": stats(cold["lat_ns"]), "warm": stats(warm["lat_ns"]) if warm else None,
              "mismatches": len(cold["mismatches"]) + (len(warm["mismatches"]) if warm else 0)})
    if tool == "livemount":
        # First read of a chunk (a recall) against reads of a chunk an earlier read recalled.
        seen, first, again = set(), [], []
        for off, ns in zip(offsets, cold["lat_ns"]):
            c = off // chunk_size
            (again if c in seen else first).append(ns)
            seen.add(c)
        t["cold_first_touch"] = stats(first)
        t["cold_chunk_already_recalled"] = stats(again)
        t["distinct_chunks_read"] = len(seen)
        t["counters_after_passes"] = kv("livemount-counters.txt")
    res["tools"][tool] = t

before, after = kv("browse-before.txt"), kv("browse-after.txt")
if after:
    alloc = res["image"]["allocated"]
    res["browse"] = {
        "file": env["BROWSE_FILE"], "file_bytes": int(figs["browse.file_bytes"]),
        "file_identical_to_rootfs": bool(figs["browse.file_identical"]) if "browse.file_identical" in figs else None,
        "browse_s": figs["browse.browse_s"], "read_s": figs["browse.read_s"],
        "after_browse": before, "after_read": after,
        "chunks_total": after["chunks_total"],
        "recalled_share_of_chunks": after["recalled_chunks"] / after["chunks_total"],
        "bytes_recalled_share_of_allocated": after["bytes_recalled"] / alloc,
    }

# Warnings and errors the daemon logged during the run (none expected).
import re
log = os.path.join(work, "logs", "daemon.log")
res["daemon_log_problems"] = [re.sub(r"\x1b\[[0-9;]*m", "", l).rstrip() for l in open(log, errors="replace")
                              if re.search(r"\b(WARN|ERROR)\b", l)] if os.path.exists(log) else []
res["offsets"] = offsets
T = res["tools"]
goals = []
L = T.get("livemount")
if L:
    c = L["cold"]
    goals = [{"goal": "cold median <= 0.5 ms", "value_ms": c["median_ms"], "met": c["median_ms"] <= GOAL_MEDIAN},
             {"goal": "cold p99 <= 2 ms", "value_ms": c["p99_ms"], "met": c["p99_ms"] <= GOAL_P99}]
    res["goals"] = goals
    res["ratios"] = {p: {"cold_median": c["median_ms"] / T[p]["cold"]["median_ms"],
                         "cold_p99": c["p99_ms"] / T[p]["cold"]["p99_ms"]}
                     for p in ["restic", "borg", "casync"] if p in T}
json.dump(res, open(env["RESULTS"], "w"), indent=2)

print()
print("=" * 112)
print(f"livemount FUSE benchmark  {res['date']}  ({res['cores']} cores; page cache "
      f"{'dropped before each cold pass' if res['cold_cache'] else 'NOT dropped: cold figures are WARM'})")
print(f"versions: {res['versions']}")
print(f"load average (1 min) at start -> end: {res['load_average']}  (figures need a quiet machine)")
print(f"image {res['image']['path']}: {st.st_size / MiB:,.0f} MiB, {res['image']['allocated'] / MiB:,.0f} MiB allocated; "
      f"{res['reads']} random 4 KiB reads of non-zero blocks (seed {res['seed']}), same offsets and order for all; "
      f"livemount chunk size {chunk_size // 1024} KiB")
print()
hdr = (f"{'tool':<15} {'access':<8} {'cold median':>11} {'p90':>8} {'p99':>8} {'max':>8}   "
       f"{'warm median':>11} {'p90':>8} {'p99':>8}   {'ingest':>7} {'repo':>8} {'mount':>7} {'bad':>4}")
print(hdr)
print("-" * len(hdr))
for name, t in T.items():
    c, w = t["cold"], t["warm"] or {}
    print(f"{name:<15} {t['access']:<8} {c['median_ms']:>8.3f} ms {c['p90_ms']:>8.3f} {c['p99_ms']:>8.3f} "
          f"{c['max_ms']:>8.2f}   {w.get('median_ms', 0):>8.3f} ms {w.get('p90_ms', 0):>8.3f} {w.get('p99_ms', 0):>8.3f}   "
          + (f"{t['ingest_s']:>6.1f}s {t['repo_bytes'] / MiB:>4,.0f} MiB" if "ingest_s" in t else f"{'(same)':>7} {'':>8}")
          + f" {t.get('mount_s', 0):>6.2f}s {t['mismatches']:>4}")
print("(latencies in ms of one 4 KiB read; ingest = repository of full.img, repo = du -sb; mount = until the file"
      " shows; bad = reads that differ from the raw image)")
if L:
    f, a = L["cold_first_touch"], L["cold_chunk_already_recalled"]
    print(f"livemount cold reads by chunk: {f['reads']} first reads of a chunk (recall): median {f['median_ms']:.3f} ms, "
          f"p99 {f['p99_ms']:.3f} ms" + (f"; {a['reads']} reads of a chunk recalled earlier in the pass: median "
          f"{a['median_ms']:.3f} ms, p99 {a['p99_ms']:.3f} ms" if a else ""))
    print()
    print("livemount's cold latency against the peers (livemount / peer: below 1 is faster) and the goal:")
    for p, r in res.get("ratios", {}).items():
        print(f"  vs {p:<8} median {r['cold_median']:6.2f}x   p99 {r['cold_p99']:6.2f}x")
    for g in goals:
        print(f"  goal {g['goal']:<24} {g['value_ms']:8.3f} ms   {'MET' if g['met'] else 'NOT MET'}"
              f"  ({g['value_ms'] / (GOAL_MEDIAN if 'median' in g['goal'] else GOAL_P99):.2f}x the goal)")
b = res.get("browse")
if b:
    print()
    print(f"browse one file: {b['file']} ({b['file_bytes'] / 1024:,.0f} KiB"
          + ("" if b["file_identical_to_rootfs"] is None else
             f", {'identical to' if b['file_identical_to_rootfs'] else 'DIFFERS from'} the source tree") + ")")
    for label, k in [("after browse (mount of the file systems)", "after_browse"), ("after reading the file", "after_read")]:
        c = b[k]
        print(f"  {label:<42} {c['recalled_chunks']:>6} / {c['chunks_total']} chunks recalled "
              f"({c['recalled_chunks'] / c['chunks_total']:.2%}), {c['bytes_recalled'] / MiB:8.1f} MiB recalled "
              f"= {c['bytes_recalled'] / res['image']['allocated']:.2%} of the disk's allocated bytes")
    print(f"  (browse took {b['browse_s']:.2f} s, reading the file {b['read_s']:.3f} s; recalled_chunks counts"
          f" all-zero chunks too, bytes_recalled only chunks with data)")
if res["daemon_log_problems"]:
    print()
    print(f"the livemount daemon logged {len(res['daemon_log_problems'])} warnings/errors, first ones:")
    for l in res["daemon_log_problems"][:5]:
        print("  " + l[:200])
print()
print(f"results written to {env['RESULTS']}")
PY
}

main() {
    ensure_tools
    need_corpus
    build_livemount
    WORK=$(mktemp -d "$CACHE/fuse-run.XXXXXX")
    mkdir -p "$WORK/logs"
    : > "$WORK/figures"
    LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
    if (( $(echo "$LOAD_START > 0.7" | bc -l) )); then
        echo "bench: WARNING: load average $LOAD_START before the run: other work will skew the timings" >&2
    fi
    write_helpers
    log "drawing $N offsets (seed $SEED) from the data ranges of $FULL"
    python3 "$WORK/offsets.py" "$FULL" "$N" "$SEED" "$WORK/offsets"
    bench_livemount
    if [[ ${BENCH_SKIP_PEERS:-0} != 1 ]]; then
        bench_restic
        bench_borg
        bench_casync
    fi
    bench_browse
    report
}

main "$@"
