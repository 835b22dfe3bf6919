# Shared helpers of the bench/*.sh scripts (sourced, not run).

die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }
port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

# stop_pid PID SIGNAL [SECONDS]: signal it and wait (30 s by default), then SIGKILL.
stop_pid() {
    local pid=$1 sig=$2 secs=${3:-30} i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 $((secs * 10))); do
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
