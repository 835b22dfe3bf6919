#!/usr/bin/env bash
# iSCSI benchmark: livemount's iSCSI target against tgt (the Linux SCSI target framework, user space) serving the
# same disk, driven by the same initiator (libiscsi's iscsi-perf), then libiscsi's conformance suite against both.
#
# What it measures, in one run, on full.img of the library benchmark's corpus (bench/library.sh):
#   - the disk: full.img goes into a fresh livemount library (one backup), and the backup is restored to a raw
#     file (checked against full.img with cmp), so both targets serve byte-identical 4 GiB disks;
#   - the targets:
#     livemount-warm  a live mount of the backup after every chunk has been recalled (the whole disk read once
#                     through the mount's FUSE file with dd, O_DIRECT, 4 MiB reads; recalled_chunks ==
#                     chunks_total is checked): reads come from the recall store (and the page cache above it);
#     livemount-cold  for each case a fresh mount (nothing recalled) and the page cache dropped just before:
#                     reads go private store -> recall store -> recall of the chunk from the library;
#     tgt-warm        tgtd serving the restored raw file (LUN 1, backing store rdwr), the file read once first so
#                     it sits in the page cache, as livemount's recall store does after its warm-up;
#     tgt-cold        the same, with the page cache dropped before each case;
#   - the cases, each for BENCH_TIME seconds, one iscsi-perf process (one session, one connection):
#     4K random read   -b 8 -r (8 blocks of 512 bytes at random LBAs) at -m 16 and -m 64 outstanding commands;
#     1M seq read      -b 2048 (sequential from LBA 0, wrapping) at -m 16 and -m 64;
#     IOPS and MiB/s (iscsi-perf's final average: commands completed over the whole run), and the CPU seconds
#     the target process used during the case (utime + stime from /proc: the initiator shares the 2 cores);
#   - the ratios livemount-warm / tgt-warm (and cold / cold) against the goals: >= 1.5x tgt's IOPS for 4K
#     random reads, >= 1.2x its throughput for 1 MiB sequential reads; and the cold goals: 1 MiB sequential
#     at 16 outstanding >= 0.8x the library's own restore throughput of the same backup (restored with the
#     page cache dropped first), random 4 KiB at 16 outstanding >= 1.0x tgt-cold's IOPS;
#   - data check: `qemu-img compare` of each warm target's LUN (over iSCSI, through QEMU's libiscsi driver)
#     against full.img, when QEMU's iSCSI block driver is installed (qemu-block-extra);
#   - conformance: libiscsi's iscsi-test-cu --dataloss against a fresh read-write live mount and against tgt's
#     LUN (writes go to the mount's private store and to the restored copy; the corpus is never touched). Each
#     family of the suite (`iscsi-test-cu --list` names matching ^ALL\.[A-Za-z0-9]+$, 51 families, 230 tests)
#     runs in its own process with its own timeout: a hang costs one family, and no test leaks state into the
#     next family. (libiscsi 1.19's CompareAndWrite.InvalidDataOutSize installs a PDU hook that rewrites byte 13
#     of every later 16-byte CDB, and leaves it installed when the target does not implement COMPARE AND WRITE;
#     in a single-process run every later *16 command of a thin-provisioned LUN is corrupted, so Read16, Write16,
#     Verify16, WriteSame16 and the *16 residual tests fail for a reason of the test tool. tgt never installs
#     the hook: its LUN is fully provisioned and the test is skipped.) A single-process `-t ALL` run per target
#     follows, for reference only. Per test: passed, failed, skipped (passed after a [SKIPPED] message) or not
#     run (the family timed out or crashed); side by side, with the names of the failing tests per target;
#   - the livemount daemon's warnings and errors (its log), and tgtd's.
# It cleans up everything it started (tgtd, the livemount daemon, its mounts, the run's folder), keeps the
# corpus, writes JSON under the cache folder and prints a table at the end.
#
# Usage:  sudo bench/iscsi.sh        (root: FUSE, tgtd, dropping the page cache)
# Env:
#   BENCH_CACHE=DIR          corpus and results folder (default /var/cache/livemount-bench); the corpus is built
#                            by bench/library.sh when full.img is missing; results go to iscsi-results.json
#   BENCH_TIME=10            seconds per iscsi-perf case (16 cases in all)
#   BENCH_LM_PORT=3270       livemount's iSCSI portal (127.0.0.1)
#   BENCH_TGT_PORT=3271      tgtd's iSCSI portal (127.0.0.1)
#   BENCH_TGT_CONTROL=3271   tgtd's management channel (-C; /var/run/tgtd/socket.N), apart from any other tgtd
#   BENCH_CU_TIMEOUT=300     seconds one conformance family may take
#   BENCH_SKIP_CU=1          no conformance runs
#   BENCH_SKIP_PERF=1        no iscsi-perf runs
#   BENCH_NO_BUILD=1         use target/release/livemount as it is instead of running cargo
#   BENCH_KEEP_WORK=1        keep the run's folder (library, restored image, logs, raw outputs)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
T=${BENCH_TIME:-10}
LM_PORT=${BENCH_LM_PORT:-3270}
TGT_PORT=${BENCH_TGT_PORT:-3271}
TGT_CONTROL=${BENCH_TGT_CONTROL:-3271}
CU_TIMEOUT=${BENCH_CU_TIMEOUT:-300}
FULL=$CACHE/full.img
RESULTS=$CACHE/iscsi-results.json
LIVEMOUNT=$ROOT/target/release/livemount
TGT_IQN=iqn.2026-11.io.livemount.bench:tgt
TGT_URL=iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1

WORK=""          # this run's library, state, restored image, logs (removed on exit)
DAEMON_PID=""    # the livemount daemon
TGTD_PID=""      # tgtd
LM_MOUNTS=()     # livemount mount ids to unmount
LOAD_START=""
LM_LIB=""        # the library: $WORK/lib

# ---------------------------------------------------------------------------------------------------------
# Clean-up: whatever was started, in reverse order of dependence. Never fails.
# ---------------------------------------------------------------------------------------------------------
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_tgtd
    stop_daemon
    remove_work
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CACHE_DROPS=yes

# CPU seconds (user + system) process $1 has used so far.
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ---------------------------------------------------------------------------------------------------------
# Tools, corpus, build.
# ---------------------------------------------------------------------------------------------------------
ensure_tools() {
    install_missing iscsi-perf:libiscsi-bin iscsi-test-cu:libiscsi-bin iscsi-inq:libiscsi-bin tgtd:tgt tgtadm:tgt \
        python3:python3 bc:bc fusermount:fuse ss:iproute2 stdbuf:coreutils cmp:diffutils
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is needed"
    [[ $(id -u) == 0 ]] || die "run as root (FUSE, tgtd, dropping the page cache)"
}

# ---------------------------------------------------------------------------------------------------------
# The two targets.
# ---------------------------------------------------------------------------------------------------------
prepare_disk() {
    local t0
    log "livemount library: backup of $FULL, restore of the backup to a raw file"
    "$LIVEMOUNT" --library "$WORK/lib" library init > "$WORK/logs/init.out"
    t0=$(now)
    "$LIVEMOUNT" --library "$WORK/lib" --json backup create "$FULL" --name full > "$WORK/backup.json" \
        2> "$WORK/logs/backup.err" || { cat "$WORK/logs/backup.err" >&2; die "livemount backup create failed"; }
    rec disk.backup_s "$(since "$t0")"
    rec disk.backup_id "$(json_get "$WORK/backup.json" id)"
    drop_caches  # the restore reads the library cold, as each cold case does
    t0=$(now)
    "$LIVEMOUNT" --library "$WORK/lib" backup restore full "$WORK/restored.img" > "$WORK/logs/restore.out" \
        2>&1 || { cat "$WORK/logs/restore.out" >&2; die "livemount backup restore failed"; }
    rec disk.restore_s "$(since "$t0")"
    cmp "$WORK/restored.img" "$FULL" || die "the restored image differs from $FULL"
    rec disk.size "$(stat -c %s "$FULL")"
    rec disk.allocated "$(( $(stat -c %b "$FULL") * $(stat -c %B "$FULL") ))"
    echo "   backup $(json_get "$WORK/backup.json" id), restored copy identical to $FULL" >&2
}

start_daemon() {
    port_free "$LM_PORT" || die "port $LM_PORT is in use (set BENCH_LM_PORT)"
    mkdir -p "$WORK/state" "$WORK/fs"
    serve_daemon --state-dir "$WORK/state" --fuse-root "$WORK/fs" --portal "127.0.0.1:$LM_PORT" --http 127.0.0.1:0
}

# A fresh read-write mount of the backup; sets MOUNT_ID, MOUNT_URL, MOUNT_FILE (JSON in $WORK/mount-$1.json).
new_mount() {
    local name=$1 out=$WORK/mount-$1.json
    lm --json mount full > "$out" 2> "$WORK/logs/mount-$name.err" \
        || { cat "$WORK/logs/mount-$name.err" >&2; die "livemount mount failed"; }
    MOUNT_ID=$(json_get "$out" id)
    LM_MOUNTS+=("$MOUNT_ID")
    MOUNT_URL=$(json_get "$out" disks 0 iscsi_url)
    MOUNT_FILE=$(json_get "$out" disks 0 fuse_path)
    timeout 30 iscsi-inq "$MOUNT_URL" > /dev/null 2>&1 || die "livemount: $MOUNT_URL does not answer INQUIRY"
}

# tgtd serving the restored copy as LUN 1.
start_tgt() {
    start_tgtd "$WORK/restored.img"
    timeout 30 iscsi-inq "$TGT_URL" > /dev/null 2>&1 || die "tgt: $TGT_URL does not answer INQUIRY"
}

# ---------------------------------------------------------------------------------------------------------
# iscsi-perf.
# ---------------------------------------------------------------------------------------------------------
CASES=("rand4k-m16:-b 8 -r -m 16" "rand4k-m64:-b 8 -r -m 64" "seq1m-m16:-b 2048 -m 16" "seq1m-m64:-b 2048 -m 64")

# perf TARGET CASE URL PID: one iscsi-perf run of BENCH_TIME seconds against URL; records IOPS, MiB/s, the CPU
# seconds process PID used, or the error.
perf() {
    local target=$1 case=$2 url=$3 pid=$4 spec="" c args out rc=0 cpu0 cpu1
    for c in "${CASES[@]}"; do [[ ${c%%:*} == "$case" ]] && spec=${c#*:}; done
    read -r -a args <<< "$spec"
    out=$WORK/perf/$target-$case.out
    cpu0=$(cpu_s "$pid")
    timeout -k 5 $((T + 60)) iscsi-perf "${args[@]}" -t "$T" "$url" > "$out" 2>&1 || rc=$?
    cpu1=$(cpu_s "$pid")
    python3 "$REPORT_PY" iscsi-perf "$out" "$target" "$case" "$rc" "$(echo "$cpu1 - $cpu0" | bc -l)" "$spec" \
        >> "$WORK/perf.jsonl"
}

bench_livemount() {
    local case t0
    log "livemount-cold: a fresh mount and a dropped page cache per case"
    for c in "${CASES[@]}"; do
        case=${c%%:*}
        new_mount "cold-$case"
        drop_caches
        perf livemount-cold "$case" "$MOUNT_URL" "$DAEMON_PID"
        mount_counters "$MOUNT_ID" | sed "s/^/livemount-cold.$case./" >> "$WORK/figures"
        drop_mount "$MOUNT_ID"
        daemon_alive || die "the livemount daemon died (log: $WORK/logs/daemon.log)"
    done

    log "livemount-warm: one mount, every chunk recalled first (dd of its FUSE file)"
    new_mount warm
    t0=$(now)
    dd if="$MOUNT_FILE" of=/dev/null bs=4M iflag=direct status=none || die "dd of $MOUNT_FILE failed"
    rec livemount-warm.warmup_s "$(since "$t0")"
    mount_counters "$MOUNT_ID" | sed "s/^/livemount-warm.after_warmup./" >> "$WORK/figures"
    grep -E 'after_warmup\.(recalled_chunks|chunks_total)=' "$WORK/figures" | sed 's/^/   /' >&2
    python3 "$REPORT_PY" warmup-complete "$WORK/figures" || die "the warm-up did not recall every chunk"
    for c in "${CASES[@]}"; do
        perf livemount-warm "${c%%:*}" "$MOUNT_URL" "$DAEMON_PID"
    done
    mount_counters "$MOUNT_ID" | sed "s/^/livemount-warm.after_cases./" >> "$WORK/figures"
    verify_lun livemount-warm "$MOUNT_URL"
    drop_mount "$MOUNT_ID"
}

bench_tgt() {
    local c t0
    log "tgt-warm: the restored file read once into the page cache first"
    t0=$(now)
    cat "$WORK/restored.img" > /dev/null
    rec tgt-warm.warmup_s "$(since "$t0")"
    for c in "${CASES[@]}"; do
        perf tgt-warm "${c%%:*}" "$TGT_URL" "$TGTD_PID"
    done
    verify_lun tgt-warm "$TGT_URL"
    log "tgt-cold: the page cache dropped before each case"
    for c in "${CASES[@]}"; do
        drop_caches
        perf tgt-cold "${c%%:*}" "$TGT_URL" "$TGTD_PID"
    done
}

# verify_lun TARGET URL: the LUN's content against full.img through QEMU's iSCSI driver, if it is installed.
verify_lun() {
    local target=$1 url=$2 t0
    if ! ls /usr/lib/*/qemu/block-iscsi.so > /dev/null 2>&1 || ! command -v qemu-img > /dev/null; then
        rec "$target.data_check" "skipped (no qemu-img with the iSCSI driver: qemu-utils, qemu-block-extra)"
        return 0
    fi
    t0=$(now)
    if timeout 600 qemu-img compare -f raw -F raw "$url" "$FULL" > "$WORK/logs/compare-$target.out" 2>&1; then
        rec "$target.data_check" "identical"
    else
        rec "$target.data_check" "DIFFERS: $(head -c 200 "$WORK/logs/compare-$target.out" | tr '\n' ' ')"
    fi
    rec "$target.data_check_s" "$(since "$t0")"
    echo "   $target: qemu-img compare with full.img: $(grep "^$target.data_check=" "$WORK/figures" | cut -d= -f2-)" >&2
}

# ---------------------------------------------------------------------------------------------------------
# Conformance: one family per process, each with a timeout; then one single-process run for reference.
# ---------------------------------------------------------------------------------------------------------
conformance() {  # conformance TARGET URL PID
    local target=$1 url=$2 pid=$3 fam rc t0 l0 dir=$WORK/cu/$1
    mkdir -p "$dir"
    t0=$(now)
    for fam in $(iscsi-test-cu --list | grep -E '^ALL\.[A-Za-z0-9]+$'); do
        rc=0
        l0=$(wc -l < "$WORK/logs/daemon.log")
        timeout -k 10 "$CU_TIMEOUT" stdbuf -o0 -e0 iscsi-test-cu --dataloss -t "$fam" "$url" \
            > "$dir/$fam.out" 2>&1 < /dev/null || rc=$?
        echo "$fam $rc" >> "$dir/rc"
        echo "$target $fam $l0 $(wc -l < "$WORK/logs/daemon.log")" >> "$WORK/daemon-log-phases"
        ((rc == 124 || rc == 137)) && echo "   $target: $fam timed out after ${CU_TIMEOUT}s" >&2
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "   $target: the target process died during $fam" >&2
            echo "$target died during $fam" >> "$WORK/target-deaths"
            break
        fi
    done
    rec "$target.cu_s" "$(since "$t0")"
    # For reference: the whole suite in one process (see the header about the leaked PDU hook).
    rc=0
    l0=$(wc -l < "$WORK/logs/daemon.log")
    timeout -k 10 "$CU_TIMEOUT" stdbuf -o0 -e0 iscsi-test-cu --dataloss -t ALL "$url" > "$dir/single-process.out" \
        2>&1 < /dev/null || rc=$?
    echo "single-process $rc" >> "$dir/rc"
    echo "$target single-process $l0 $(wc -l < "$WORK/logs/daemon.log")" >> "$WORK/daemon-log-phases"
    python3 "$REPORT_PY" cu summary "$dir" >&2
}

bench_conformance() {
    log "conformance: iscsi-test-cu --dataloss, one family at a time (timeout ${CU_TIMEOUT}s each)"
    new_mount conformance
    echo "   livemount: $MOUNT_URL" >&2
    conformance livemount "$MOUNT_URL" "$DAEMON_PID"
    echo "   tgt: $TGT_URL" >&2
    conformance tgt "$TGT_URL" "$TGTD_PID"
}

# ---------------------------------------------------------------------------------------------------------
# Report: JSON under the cache folder and the table.
# ---------------------------------------------------------------------------------------------------------
report() {
    if [[ -d $WORK/cu/livemount ]]; then python3 "$REPORT_PY" cu json "$WORK/cu/livemount" > "$WORK/cu-livemount.json"; fi
    if [[ -d $WORK/cu/tgt ]]; then python3 "$REPORT_PY" cu json "$WORK/cu/tgt" > "$WORK/cu-tgt.json"; fi
    # The daemon's warnings and errors, without colours, counted by message (ITTs and times stripped).
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/logs/daemon.log" | grep -n -E ' (WARN|ERROR) ' > "$WORK/daemon-problems.txt" || true
    grep -v -E 'iser_ib_init|oom_score_adj|nr_open|work_timer_start|bs_init|device_mgmt|bs_thread_open' \
        "$WORK/logs/tgtd.log" > "$WORK/tgtd-problems.txt" 2>/dev/null || true
    WORK=$WORK RESULTS=$RESULTS FULL=$FULL T=$T LOAD_START=$LOAD_START CACHE_DROPS=$CACHE_DROPS \
    LM_PORT=$LM_PORT TGT_PORT=$TGT_PORT LIVEMOUNT=$LIVEMOUNT python3 "$REPORT_PY" summary-iscsi
}

main() {
    ensure_tools
    need_corpus
    build_livemount
    WORK=$(mktemp -d "$CACHE/iscsi-run.XXXXXX")
    LM_LIB=$WORK/lib
    mkdir -p "$WORK/logs" "$WORK/perf" "$WORK/cu"
    : > "$WORK/figures"
    load_prologue
    prepare_disk
    start_daemon
    start_tgt
    if [[ ${BENCH_SKIP_PERF:-0} != 1 ]]; then
        bench_livemount
        bench_tgt
    fi
    [[ ${BENCH_SKIP_CU:-0} == 1 ]] || bench_conformance
    report
}

main "$@"
