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
