# shellcheck shell=bash
# Shared helpers of the bench/*.sh scripts (sourced, not run). The scripts' Python lives in bench/report.py
# ($REPORT_PY), one subcommand per job.
# Globals the helpers use, when a script has them: WORK (the run's folder), LIVEMOUNT (the binary), LM_LIB
# (the library its daemon serves), DAEMON_PID, LM_MOUNTS, TGTD_PID, TGT_PORT, TGT_CONTROL, TGT_IQN,
# LOAD_START.

REPORT_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/report.py

die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }
log() { printf '\n== %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
free_port() { python3 "$REPORT_PY" free-port; }
du_bytes() { du -sb "$1" | cut -f1; }

# The CLI on the daemon's library and API socket.
lm() { "$LIVEMOUNT" --library "$LM_LIB" --api "$WORK/api.sock" "$@"; }

# json_get FILE KEY...: one field of a JSON file (a KEY of digits indexes a list), as Python prints it.
json_get() { python3 "$REPORT_PY" json-get "$@"; }

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

# Sets LOAD_START; on a shared 2-core machine, someone else's build halves every figure: say so.
load_prologue() {
    LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
    if (( $(echo "$LOAD_START > 0.7" | bc -l) )); then
        echo "bench: WARNING: load average $LOAD_START before the run: other work will skew the timings" >&2
    fi
}

# The load average at the start and now, for the reports: "START -> NOW".
load_span() { echo "$LOAD_START -> $(cut -d' ' -f1 /proc/loadavg)"; }

# stop_pid PID SIGNAL [SECONDS]: signal it and wait (30 s by default), then SIGKILL.
stop_pid() {
    local pid=$1 sig=$2 secs=${3:-30}
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "bench: $pid did not stop on SIG$sig within ${secs}s: killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Cold-cache timings only mean something if the page cache really is empty; without the permission the
# figures are warm, and CACHE_DROPS=no lets the report say so.
CACHE_DROPS=${CACHE_DROPS:-yes}
drop_caches() {
    sync
    if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        [[ $CACHE_DROPS == yes ]] && echo "bench: cannot drop the page cache (not root?): figures are WARM" >&2
        CACHE_DROPS=no
    fi
}

# Live mounts a script made (LM_MOUNTS), removed through the script's `lm` wrapper of the CLI.
unmount_all() {
    local id
    for id in "${LM_MOUNTS[@]}"; do
        lm unmount "$id" > /dev/null 2>&1 || echo "bench: unmount $id failed" >&2
    done
    LM_MOUNTS=()
}

# Stops the script's daemon (DAEMON_PID) after its mounts; FUSE roots under $WORK that a dead daemon left
# behind are detached.
stop_daemon() {
    [[ -n $DAEMON_PID ]] && unmount_all
    if [[ -n $DAEMON_PID ]]; then
        stop_pid "$DAEMON_PID" TERM 30
        DAEMON_PID=""
    fi
    if [[ -n $WORK ]]; then
        local m
        for m in $(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
            fusermount -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
    fi
}

# install_missing CMD:PACKAGE...: installs (apt) the packages of the commands that are missing, so a script runs
# as is on a fresh Debian 12.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" > /dev/null || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "bench: installing ${missing[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# Records one figure: rec KEY VALUE (gathered from $WORK/figures into the JSON at the end).
rec() { echo "$1=$2" >> "$WORK/figures"; }

# Removes the run's folder, or keeps it with BENCH_KEEP_WORK=1.
remove_work() {
    [[ -n $WORK && -d $WORK ]] || return 0
    if [[ ${BENCH_KEEP_WORK:-0} == 1 ]]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# Builds the release binary $LIVEMOUNT (under $ROOT/target), unless BENCH_NO_BUILD=1 says to use it as it is.
build_livemount() {
    if [[ ${BENCH_NO_BUILD:-0} == 1 ]]; then
        [[ -x $LIVEMOUNT ]] || die "BENCH_NO_BUILD=1 but $LIVEMOUNT is missing"
        return 0
    fi
    command -v cargo > /dev/null || die "cargo is needed to build livemount (or set BENCH_NO_BUILD=1)"
    echo "bench: building livemount (release)" >&2
    (cd "$ROOT" && CARGO_TARGET_DIR=$ROOT/target cargo build --release -q -p appliance)
}

# The library benchmark's corpus ($FULL in $CACHE), built by bench/library.sh when it is missing.
need_corpus() {
    if [[ ! -f $FULL ]]; then
        echo "bench: no corpus in $CACHE: building it with bench/library.sh (debootstrap, several minutes)" >&2
        BENCH_CACHE=$CACHE BENCH_ONLY_CORPUS=1 bash "$ROOT/bench/library.sh"
    fi
    [[ -f $FULL ]] || die "$FULL is missing: run 'sudo bench/library.sh' first"
}

# ---------------------------------------------------------------------------------------------------------
# The livemount daemon and its mounts.
# ---------------------------------------------------------------------------------------------------------
# serve_daemon SERVE_ARGS...: starts `livemount serve` on $LM_LIB and $WORK/api.sock in the background
# (DAEMON_PID, log in $WORK/logs/daemon.log) and waits until its API answers (30 s at most).
serve_daemon() {
    rm -f "$WORK/api.sock"
    "$LIVEMOUNT" --library "$LM_LIB" --api "$WORK/api.sock" serve "$@" < /dev/null >> "$WORK/logs/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 1 600); do
        if [[ -S $WORK/api.sock ]] && lm --json mounts > /dev/null 2>&1; then return 0; fi
        kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$WORK/logs/daemon.log" >&2; die "the daemon exited"; }
        sleep 0.05
    done
    tail -20 "$WORK/logs/daemon.log" >&2
    die "the daemon did not come up in 30 s"
}

daemon_alive() { kill -0 "$DAEMON_PID" 2>/dev/null; }

# drop_mount ID: unmounts it and forgets it in LM_MOUNTS (the next case gets a fresh one).
drop_mount() {
    local id=$1 keep=() m
    timeout 120 "$LIVEMOUNT" --library "$LM_LIB" --api "$WORK/api.sock" unmount "$id" > /dev/null 2>&1 \
        || echo "bench: unmount $id failed" >&2
    for m in "${LM_MOUNTS[@]}"; do [[ $m == "$id" ]] || keep+=("$m"); done
    LM_MOUNTS=("${keep[@]}")
}

# mount_counters ID [first-disk]: the counters of mount ID as KEY=VALUE lines, summed over its disks (or of
# its first disk only).
mount_counters() { lm --json mounts | python3 "$REPORT_PY" mount-counters "$@"; }

# ---------------------------------------------------------------------------------------------------------
# tgtd (the Linux SCSI target framework), on 127.0.0.1:$TGT_PORT, managed through control port $TGT_CONTROL.
# ---------------------------------------------------------------------------------------------------------
# start_tgtd [BACKING_FILE]: starts tgtd (TGTD_PID, log in $WORK/logs/tgtd.log) with target 1 ($TGT_IQN),
# open to any initiator; with BACKING_FILE, that file as its LUN 1.
start_tgtd() {
    local backing=${1:-}
    port_free "$TGT_PORT" || die "port $TGT_PORT is in use (set BENCH_TGT_PORT)"
    [[ -S /var/run/tgtd/socket.$TGT_CONTROL ]] && tgtadm -C "$TGT_CONTROL" --op show --mode system > /dev/null 2>&1 \
        && die "a tgtd already listens on control port $TGT_CONTROL (set BENCH_TGT_CONTROL)"
    # A background job of a script starts with SIGINT ignored, and tgtd keeps that disposition (it would then
    # ignore the SIGINT that stops it): exec it with SIGINT back at its default. (Inline, not in report.py:
    # the exec must replace this very process, so that TGTD_PID is tgtd's.)
    python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
        tgtd -f -C "$TGT_CONTROL" --iscsi "portal=127.0.0.1:$TGT_PORT" < /dev/null >> "$WORK/logs/tgtd.log" 2>&1 &
    TGTD_PID=$!
    for _ in $(seq 1 200); do
        tgtadm -C "$TGT_CONTROL" --op show --mode system > /dev/null 2>&1 && break
        kill -0 "$TGTD_PID" 2>/dev/null || { tail -20 "$WORK/logs/tgtd.log" >&2; die "tgtd exited"; }
        sleep 0.05
    done
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op new --mode target --tid 1 -T "$TGT_IQN"
    if [[ -n $backing ]]; then
        tgtadm -C "$TGT_CONTROL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$backing"
    fi
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op bind --mode target --tid 1 -I ALL
}

stop_tgtd() {
    [[ -n $TGTD_PID ]] || return 0
    # tgtd stops on SIGINT (it is started with SIGINT at its default disposition, see start_tgtd); if it does
    # not, its own shutdown: remove the target, then the system.
    stop_pid "$TGTD_PID" INT 10 2>/dev/null || true
    if kill -0 "$TGTD_PID" 2>/dev/null; then
        tgtadm -C "$TGT_CONTROL" --lld iscsi --op delete --mode target --tid 1 --force > /dev/null 2>&1 || true
        tgtadm -C "$TGT_CONTROL" --lld iscsi --op delete --mode system > /dev/null 2>&1 || true
        stop_pid "$TGTD_PID" INT 10
    fi
    TGTD_PID=""
}

# ---------------------------------------------------------------------------------------------------------
# The boot benchmarks' guest (bench/boot.sh, bench/cloud.sh): GUEST, PACKAGES and GUEST_CACHE set by the script.
# ---------------------------------------------------------------------------------------------------------
# The end-to-end tests' Debian 12 guest image and the open-iscsi packages for it, built on first use.
prepare_guest() {
    mkdir -p "$GUEST_CACHE"
    if [[ ! -s $GUEST ]]; then
        log "building the guest image $GUEST (debootstrap, several minutes)"
    fi
    "$ROOT/tests/fixtures/make-guest-image.sh" "$GUEST"
    local debs=$PACKAGES/debian-12
    if [[ ! -e $debs/.complete ]]; then
        log "fetching open-iscsi packages for the guest into $debs"
        mkdir -p "$debs"
        "$ROOT/tests/fixtures/fetch-open-iscsi-debs.sh" "$debs"
        : > "$debs/.complete"
    fi
}

# Bytes in the data extents of a file (SEEK_DATA / SEEK_HOLE): what is allocated, not its apparent size.
data_bytes() { python3 "$REPORT_PY" data-bytes "$1"; }

# A file in the guest's ext4 root (partition at 1 MiB) of a disk image, without mounting it.
guest_stat() {  # guest_stat IMAGE PATH: prints debugfs's stat, empty when missing
    local dev out
    dev=$(losetup --find --show --read-only --offset 1048576 "$1")
    out=$(debugfs -R "stat $2" "$dev" 2>/dev/null | head -3 || true)
    losetup -d "$dev" || true
    echo "$out"
}

# A fresh copy of the prepared guest as LUN 1 (every tgt boot starts from the same disk).
tgt_fresh_lun() {
    local i
    if [[ -f $WORK/tgt.img ]]; then
        # The last boot's session may linger a moment after QEMU's exit.
        for i in $(seq 1 100); do
            tgtadm -C "$TGT_CONTROL" --lld iscsi --op delete --mode logicalunit --tid 1 --lun 1 > /dev/null 2>&1 \
                && break
            sleep 0.2
        done
        ((i < 100)) || die "tgt: cannot remove LUN 1 (a session still open?)"
    fi
    rm -f "$WORK/tgt.img"
    cp --sparse=always "$WORK/tgt-pristine.img" "$WORK/tgt.img"
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/tgt.img"
}
