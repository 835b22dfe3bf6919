#!/usr/bin/env bash
# Boot benchmark: how long the same Debian guest takes to boot from a livemount boot mount (mount --boot, then
# iPXE sanboot from livemount's iSCSI target, the disk recalled from the library as the guest reads it) and
# from tgt serving the fully restored raw image of the same prepared guest; and how much of the disk a boot
# recalls from the library.
#
# What it does, in one run:
#   - the guest: the end-to-end test's Debian 12 image (tests/fixtures/make-guest-image.sh, cached at
#     /var/cache/livemount-guest/bookworm.img; no open-iscsi in it) and the open-iscsi packages for it
#     (tests/fixtures/fetch-open-iscsi-debs.sh); both are built on first use;
#   - a fresh library (chunk size BENCH_CHUNK_SIZE, default: the library's default) with one backup of the
#     guest; the disk's allocated data: (chunk_count - zero_chunks) * chunk_size from `backup show`, and the
#     raw image's data extents (SEEK_DATA/SEEK_HOLE);
#   - the daemon: `livemount serve --advertise 10.0.2.2 --guest-packages ...` on 127.0.0.1 (QEMU's user-mode
#     network reaches the host's 127.0.0.1 as 10.0.2.2);
#   - the tgt disk: one `mount --boot` (open-iscsi installed offline, initiator name, initramfs rebuilt), its
#     disk copied out through the mount's FUSE file (cp --sparse=always) BEFORE anything boots it, then the
#     mount is removed. tgtd serves a fresh copy of that prepared image for every boot (LUN 1, backing store
#     rdwr, any initiator), so every tgt boot starts from the same disk, as every livemount boot starts from a
#     fresh mount. The guest tgt boots has open-iscsi and the initramfs of a livemount-prepared guest: the
#     two sides boot the same guest, only the target differs;
#   - the boots, N rounds (BENCH_BOOTS), the paths alternating within each round:
#       lm-net    a fresh `mount --boot`, the page cache dropped, QEMU's own iPXE (virtio-net ROM) fetches the
#                 mount's script_url (bootfile= of -netdev user) and sanboots from livemount's target;
#       tgt-net   the page cache dropped, QEMU's iPXE fetches tgt.ipxe from a local HTTP server (python3 -m
#                 http.server): set initiator-iqn <the prepared guest's>, sanboot iscsi:10.0.2.2::PORT:1:IQN;
#       lm-disk   a fresh `mount --boot --mac MAC`, the page cache dropped, QEMU boots `livemount image
#                 ipxe-disk` (the product's path: entry script, chain by MAC, the mount's script, sanboot);
#       tgt-disk  the same boot disk built for the local HTTP server, whose /ipxe/entry.ipxe is the tgt script:
#                 the boot-disk path with tgt as the target;
#     QEMU: -accel tcg -m 1024 -nographic -no-reboot, virtio-net; each boot is timed from QEMU's start to the
#     first kernel line ("Linux version"), to iscsistart, to the LIVEMOUNT-BOOT-MARKER line on the serial
#     console and to QEMU's exit (the guest powers off). The marker must say tran=iscsi (root on the iSCSI
#     disk). Medians over the rounds;
#   - the recall of each livemount boot (`livemount mounts --json`, disks[0].counters): right after
#     `mount --boot` (the preparation reads part of the disk) and after the boot, against the allocated data
#     (bytes_recalled counts non-zero chunks only);
#   - goals: livemount's boot (to the marker) <= 1.2x tgt's on the same path; recalled <= 15% of the
#     allocated data;
#   - recall sweep: for each size of BENCH_SWEEP_SIZES that is not the main chunk size, a library with that
#     chunk size and one lm-net boot (recall after mount --boot and after the boot, and the boot time);
#   - the daemon's warnings and errors.
# It cleans up everything it started (QEMU, tgtd, the HTTP server, the daemon and its mounts, the run's
# folder), writes JSON to the cache folder and prints a table at the end.
#
# Usage:  sudo bench/boot.sh        (root: FUSE, tgtd, dropping the page cache, the guest image)
# Env:
#   BENCH_CACHE=DIR          results folder (default /var/cache/livemount-bench): boot-results.json
#   BENCH_BOOTS=2            rounds (each round boots every path of BENCH_PATHS once)
#   BENCH_PATHS="lm-net tgt-net lm-disk tgt-disk"   the paths of a round, in this order
#   BENCH_CHUNK_SIZE=SIZE    chunk size of the main library (default: the library's default)
#   BENCH_SWEEP_SIZES="64K 1M"  chunk sizes for the recall sweep (one lm-net boot each; "" for none)
#   BENCH_BOOT_TIMEOUT=900   seconds one boot may take
#   BENCH_LM_PORT=3290       livemount's iSCSI portal (127.0.0.1)
#   BENCH_TGT_PORT=3291      tgtd's iSCSI portal (127.0.0.1)
#   BENCH_TGT_CONTROL=3292   tgtd's management channel (-C)
#   BENCH_LM_HTTP=8290       livemount's HTTP server (iPXE scripts)
#   BENCH_WWW_PORT=8291      the local HTTP server for tgt's iPXE scripts
#   BENCH_NO_BUILD=1         use target/release/livemount as it is instead of running cargo
#   BENCH_KEEP_WORK=1        keep the run's folder (libraries, copies, console logs)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
GUEST_CACHE=/var/cache/livemount-guest
GUEST=$GUEST_CACHE/bookworm.img
PACKAGES=$GUEST_CACHE/guest-packages
N=${BENCH_BOOTS:-2}
PATHS=${BENCH_PATHS:-lm-net tgt-net lm-disk tgt-disk}
CHUNK_SIZE=${BENCH_CHUNK_SIZE:-}
SWEEP_SIZES=${BENCH_SWEEP_SIZES-64K 1M}
BOOT_TIMEOUT=${BENCH_BOOT_TIMEOUT:-900}
LM_PORT=${BENCH_LM_PORT:-3290}
TGT_PORT=${BENCH_TGT_PORT:-3291}
TGT_CONTROL=${BENCH_TGT_CONTROL:-3292}
LM_HTTP=${BENCH_LM_HTTP:-8290}
WWW_PORT=${BENCH_WWW_PORT:-8291}
RESULTS=$CACHE/boot-results.json
LIVEMOUNT=$ROOT/target/release/livemount
TGT_IQN=iqn.2026-11.io.livemount.bench:boot-tgt
MAC_NET=52:54:00:4c:4d:21
MAC_DISK=52:54:00:4c:4d:22

WORK=""          # this run's folder (removed on exit)
LIB=""           # the library the daemon serves
DAEMON_PID=""    # the livemount daemon
TGTD_PID=""      # tgtd
WWW_PID=""       # python3 -m http.server
BOOT_PID=""      # the boot helper (python) of the boot under way
LM_MOUNTS=()     # livemount mount ids to unmount

log() { printf '\n== %s\n' "$*" >&2; }
lm() { "$LIVEMOUNT" --library "$LIB" --api "$WORK/api.sock" "$@"; }
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2:]: d = d[int(k)] if k.isdigit() else d[k]
print(d)' "$@"; }

# ---------------------------------------------------------------------------------------------------------
# Clean-up: whatever was started, in reverse order of dependence. Never fails.
# ---------------------------------------------------------------------------------------------------------

stop_boot() {
    local q
    [[ -n $BOOT_PID ]] && stop_pid "$BOOT_PID" TERM 10
    BOOT_PID=""
    # The helper kills its QEMU on SIGTERM; a QEMU left behind (the helper was killed) goes here.
    if [[ -n $WORK && -f $WORK/qemu.pid ]]; then
        q=$(cat "$WORK/qemu.pid")
        if [[ -n $q ]] && grep -q qemu "/proc/$q/comm" 2>/dev/null; then stop_pid "$q" TERM 10; fi
        rm -f "$WORK/qemu.pid"
    fi
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

stop_www() {
    [[ -n $WWW_PID ]] && stop_pid "$WWW_PID" TERM 10
    WWW_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_boot
    stop_tgtd
    stop_www
    stop_daemon
    remove_work
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CACHE_DROPS=yes



# ---------------------------------------------------------------------------------------------------------
# Tools, guest, build.
# ---------------------------------------------------------------------------------------------------------
ensure_tools() {
    install_missing qemu-system-x86_64:qemu-system-x86 tgtd:tgt tgtadm:tgt python3:python3 bc:bc fusermount:fuse \
        ss:iproute2 curl:curl debugfs:e2fsprogs losetup:mount
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is needed"
    [[ $(id -u) == 0 ]] || die "run as root (FUSE, tgtd, dropping the page cache, the guest image)"
}

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
data_bytes() {
    python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
off = total = 0
while off < end:
    try:
        start = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    total += stop - start
    off = stop
print(total)
PY
}

# ---------------------------------------------------------------------------------------------------------
# Library, daemon, mounts.
# ---------------------------------------------------------------------------------------------------------
# make_library TAG SIZE: a fresh library at $WORK/lib-TAG with one backup of the guest ("guest"); records
# TAG.chunk_size, TAG.chunk_count, TAG.zero_chunks, TAG.allocated (non-zero chunks * chunk size).
make_library() {
    local tag=$1 size=$2 lib=$WORK/lib-$1 t0 args=()
    [[ -n $size && $size != default ]] && args=(--chunk-size "$size")
    "$LIVEMOUNT" --library "$lib" --json library init "${args[@]}" > "$WORK/logs/init-$tag.json"
    t0=$(now)
    "$LIVEMOUNT" --library "$lib" --json backup create --name guest "$GUEST" > "$WORK/backup-$tag.json" \
        2> "$WORK/logs/backup-$tag.err" || { cat "$WORK/logs/backup-$tag.err" >&2; die "backup create failed"; }
    rec "$tag.backup_s" "$(since "$t0")"
    "$LIVEMOUNT" --library "$lib" --json backup show guest > "$WORK/show-$tag.json"
    python3 - "$WORK/show-$tag.json" "$tag" >> "$WORK/figures" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
d = m["disks"][0]
t = sys.argv[2]
print(f"{t}.chunk_size={d['chunk_size']}")
print(f"{t}.chunk_count={d['chunk_count']}")
print(f"{t}.zero_chunks={d['zero_chunks']}")
print(f"{t}.allocated={(d['chunk_count'] - d['zero_chunks']) * d['chunk_size']}")
PY
    echo "   library $tag: $(grep "^$tag\.\(chunk_size\|chunk_count\|zero_chunks\|allocated\)=" "$WORK/figures" \
        | sed "s/^$tag\.//" | tr '\n' ' ')" >&2
}

start_daemon() {  # start_daemon LIB
    local i
    LIB=$1
    port_free "$LM_PORT" || die "port $LM_PORT is in use (set BENCH_LM_PORT)"
    port_free "$LM_HTTP" || die "port $LM_HTTP is in use (set BENCH_LM_HTTP)"
    mkdir -p "$WORK/state" "$WORK/fs"
    rm -f "$WORK/api.sock"
    echo "---- daemon on $LIB" >> "$WORK/logs/daemon.log"
    "$LIVEMOUNT" --library "$LIB" --api "$WORK/api.sock" serve --state-dir "$WORK/state" \
        --fuse-root "$WORK/fs" --portal "127.0.0.1:$LM_PORT" --http "127.0.0.1:$LM_HTTP" \
        --advertise 10.0.2.2 --guest-packages "$PACKAGES" < /dev/null >> "$WORK/logs/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for i in $(seq 1 600); do
        if [[ -S $WORK/api.sock ]] && lm --json mounts > /dev/null 2>&1; then return 0; fi
        kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$WORK/logs/daemon.log" >&2; die "the daemon exited"; }
        sleep 0.05
    done
    tail -20 "$WORK/logs/daemon.log" >&2
    die "the daemon did not come up in 30 s"
}

daemon_alive() { kill -0 "$DAEMON_PID" 2>/dev/null; }

# boot_mount NAME MAC: a fresh `mount --boot`; sets MOUNT_ID, MOUNT_JSON; records NAME.prep_s and the
# counters right after the preparation (NAME.prep.*).
boot_mount() {
    local name=$1 mac=$2 t0
    MOUNT_JSON=$WORK/mount-$name.json
    t0=$(now)
    lm --json mount guest --boot --mac "$mac" > "$MOUNT_JSON" 2> "$WORK/logs/mount-$name.err" \
        || { cat "$WORK/logs/mount-$name.err" >&2; tail -20 "$WORK/logs/daemon.log" >&2; die "mount --boot failed"; }
    rec "$name.prep_s" "$(since "$t0")"
    MOUNT_ID=$(json_get "$MOUNT_JSON" id)
    LM_MOUNTS+=("$MOUNT_ID")
    json_get "$MOUNT_JSON" boot changes | grep -q "installed open-iscsi" \
        || die "mount --boot did not install open-iscsi: $(json_get "$MOUNT_JSON" boot changes)"
    mount_counters "$MOUNT_ID" | sed "s/^/$name.prep./" >> "$WORK/figures"
}

drop_mount() {  # drop_mount ID
    local id=$1 keep=() m
    timeout 120 "$LIVEMOUNT" --library "$LIB" --api "$WORK/api.sock" unmount "$id" > /dev/null 2>&1 \
        || echo "bench: unmount $id failed" >&2
    for m in "${LM_MOUNTS[@]}"; do [[ $m == "$id" ]] || keep+=("$m"); done
    LM_MOUNTS=("${keep[@]}")
}

# Counters of disk 0 of mount $1 as KEY=VALUE lines.
mount_counters() {
    lm --json mounts | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["id"] == sys.argv[1]:
        for k, v in m["disks"][0]["counters"].items():
            print(f"{k}={v}")
        break
else:
    sys.exit("mount " + sys.argv[1] + " is not listed")' "$1"
}

# ---------------------------------------------------------------------------------------------------------
# The tgt side: the prepared guest copied out of a boot mount, tgtd, the local HTTP server for its scripts.
# ---------------------------------------------------------------------------------------------------------
# A file in the guest's ext4 root (partition at 1 MiB) of a disk image, without mounting it.
guest_stat() {  # guest_stat IMAGE PATH: prints debugfs's stat, empty when missing
    local dev out
    dev=$(losetup --find --show --read-only --offset 1048576 "$1")
    out=$(debugfs -R "stat $2" "$dev" 2>/dev/null | head -3 || true)
    losetup -d "$dev" || true
    echo "$out"
}

prepare_tgt_disk() {
    local t0 file
    log "tgt disk: mount --boot, then the prepared disk copied out through the FUSE file (before any boot)"
    boot_mount copy "$MAC_NET"
    file=$(json_get "$MOUNT_JSON" disks 0 fuse_path)
    TGT_INITIATOR=$(json_get "$MOUNT_JSON" boot initiator_iqn)
    rec copy.initiator_iqn "$TGT_INITIATOR"
    t0=$(now)
    cp --sparse=always "$file" "$WORK/tgt-pristine.img" || die "copy of $file failed"
    rec copy.copy_s "$(since "$t0")"
    rec copy.data_bytes "$(data_bytes "$WORK/tgt-pristine.img")"
    drop_mount "$MOUNT_ID"
    [[ -n $(guest_stat "$WORK/tgt-pristine.img" /usr/sbin/iscsistart) ]] \
        || die "the copied guest has no /usr/sbin/iscsistart: it is not the prepared guest"
    echo "   $(stat -c %s "$WORK/tgt-pristine.img") bytes, $(grep '^copy.data_bytes=' "$WORK/figures" | cut -d= -f2)" \
         "in data extents, copied in $(grep '^copy.copy_s=' "$WORK/figures" | cut -d= -f2 | cut -c1-5) s;" \
         "initiator $TGT_INITIATOR; open-iscsi present" >&2
}

start_tgtd() {
    local i
    port_free "$TGT_PORT" || die "port $TGT_PORT is in use (set BENCH_TGT_PORT)"
    [[ -S /var/run/tgtd/socket.$TGT_CONTROL ]] && tgtadm -C "$TGT_CONTROL" --op show --mode system > /dev/null 2>&1 \
        && die "a tgtd already listens on control port $TGT_CONTROL (set BENCH_TGT_CONTROL)"
    # A background job of a script starts with SIGINT ignored, and tgtd keeps that disposition (it would then
    # ignore the SIGINT that stops it): exec it with SIGINT back at its default.
    python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
        tgtd -f -C "$TGT_CONTROL" --iscsi "portal=127.0.0.1:$TGT_PORT" < /dev/null >> "$WORK/logs/tgtd.log" 2>&1 &
    TGTD_PID=$!
    for i in $(seq 1 200); do
        tgtadm -C "$TGT_CONTROL" --op show --mode system > /dev/null 2>&1 && break
        kill -0 "$TGTD_PID" 2>/dev/null || { tail -20 "$WORK/logs/tgtd.log" >&2; die "tgtd exited"; }
        sleep 0.05
    done
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op new --mode target --tid 1 -T "$TGT_IQN"
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op bind --mode target --tid 1 -I ALL
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

start_www() {
    local i
    port_free "$WWW_PORT" || die "port $WWW_PORT is in use (set BENCH_WWW_PORT)"
    mkdir -p "$WORK/www/ipxe"
    printf '#!ipxe\nset initiator-iqn %s\nsanboot --keep iscsi:10.0.2.2::%s:1:%s\n' \
        "$TGT_INITIATOR" "$TGT_PORT" "$TGT_IQN" > "$WORK/www/tgt.ipxe"
    # The boot disk's entry script asks for /ipxe/entry.ipxe?mac=...: the server ignores the query.
    cp "$WORK/www/tgt.ipxe" "$WORK/www/ipxe/entry.ipxe"
    python3 -m http.server "$WWW_PORT" --bind 127.0.0.1 --directory "$WORK/www" < /dev/null \
        >> "$WORK/logs/www.log" 2>&1 &
    WWW_PID=$!
    for i in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$WWW_PORT/tgt.ipxe" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "the local HTTP server did not come up"
}

# ---------------------------------------------------------------------------------------------------------
# One boot: QEMU under a helper that stamps the console's milestones.
# ---------------------------------------------------------------------------------------------------------
write_boot_helper() {
    cat > "$WORK/boot.py" <<'PY'
# boot.py NAME TIMEOUT CONSOLE_LOG PID_FILE -- QEMU ARGS...: runs QEMU, stamps milestones of its serial console
# (seconds since QEMU's start), prints one JSON line.
import json, os, select, signal, subprocess, sys, time

name, timeout, console_log, pid_file = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
cmd = sys.argv[sys.argv.index("--") + 1:]
MILESTONES = [("kernel", "Linux version"), ("iscsistart", "iscsistart"), ("marker", "LIVEMOUNT-BOOT-MARKER")]

t0 = time.monotonic()
q = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
open(pid_file, "w").write(str(q.pid))

def stop(*_):
    q.terminate()
    try:
        q.wait(10)
    except subprocess.TimeoutExpired:
        q.kill()
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)

seen, marker_line, buf, out = {}, None, b"", open(console_log, "wb")
fd = q.stdout.fileno()
timed_out = False
while True:
    left = timeout - (time.monotonic() - t0)
    if left <= 0:
        timed_out = True
        q.kill()
        break
    r, _, _ = select.select([fd], [], [], min(left, 1.0))
    if not r:
        continue
    data = os.read(fd, 65536)
    if not data:
        break
    t = time.monotonic() - t0
    out.write(data)
    buf += data
    *lines, buf = buf.split(b"\n")
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if marker_line is None and "LIVEMOUNT-BOOT-MARKER" in line:
            marker_line = line.strip()
    partial = buf.decode("utf-8", "replace")
    for key, text in MILESTONES:
        if key not in seen and (any(text in l.decode("utf-8", "replace") for l in lines) or text in partial):
            seen.setdefault(key, round(t, 2))
rc = q.wait()
exit_s = round(time.monotonic() - t0, 2)
out.close()
os.unlink(pid_file)
r = {"name": name, "rc": rc, "timed_out": timed_out, "exit_s": exit_s, "marker_line": marker_line}
r.update({k + "_s": seen.get(k) for k, _ in MILESTONES})
r["ok"] = bool(marker_line) and "tran=iscsi" in marker_line and not timed_out
print(json.dumps(r))
PY
}

# boot_vm RUN MODE ARG MAC: MODE net (ARG: the bootfile URL) or disk (ARG: the boot disk image). Appends a
# JSON line to $WORK/boots.jsonl (with the run's tag) and sets BOOT_OK.
boot_vm() {
    local run=$1 mode=$2 arg=$3 mac=$4 line
    local args=(qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot)
    if [[ $mode == net ]]; then
        args+=(-netdev "user,id=n0,bootfile=$arg" -device "virtio-net-pci,netdev=n0,mac=$mac" -boot n)
    else
        args+=(-drive "file=$arg,format=raw,if=ide,snapshot=on" -netdev user,id=n0
               -device "virtio-net-pci,netdev=n0,mac=$mac" -boot c)
    fi
    python3 "$WORK/boot.py" "$run" "$BOOT_TIMEOUT" "$WORK/logs/console-$run.log" "$WORK/qemu.pid" -- "${args[@]}" \
        > "$WORK/boot-$run.json" 2> "$WORK/logs/boot-$run.err" &
    BOOT_PID=$!
    wait "$BOOT_PID" || true
    BOOT_PID=""
    line=$(cat "$WORK/boot-$run.json")
    [[ -n $line ]] || { cat "$WORK/logs/boot-$run.err" >&2; die "the boot helper failed for $run"; }
    echo "$line" >> "$WORK/boots.jsonl"
    BOOT_OK=$(python3 - "$WORK/boot-$run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
f = lambda k: "-" if r.get(k) is None else f"{r[k]:.1f}s"
verdict = "ok" if r["ok"] else "FAILED (no marker with tran=iscsi)"
print(f"   {r['name']:<16} kernel {f('kernel_s')}  iscsistart {f('iscsistart_s')}  marker {f('marker_s')}  "
      f"exit {f('exit_s')}  {verdict}", file=sys.stderr)
print("yes" if r["ok"] else "no")
PY
)
    if [[ $BOOT_OK != yes ]]; then
        echo "   console tail ($WORK/logs/console-$run.log):" >&2
        tail -c 2000 "$WORK/logs/console-$run.log" | tr -d '\033' | tail -15 | sed 's/^/     | /' >&2
    fi
}

# lm_boot RUN MODE: a fresh boot mount, the page cache dropped, the boot; recall counters before and after.
lm_boot() {
    local run=$1 mode=$2 mac arg url base
    [[ $mode == net ]] && mac=$MAC_NET || mac=$MAC_DISK
    boot_mount "$run" "$mac"
    if [[ $mode == net ]]; then
        arg=$(json_get "$MOUNT_JSON" boot script_url)
        curl -sf "${arg/10.0.2.2/127.0.0.1}" | grep -q sanboot || die "the mount's script $arg has no sanboot"
    else
        if [[ ! -f $WORK/lm-boot.img ]]; then
            url=$(json_get "$MOUNT_JSON" boot entry_url)
            base=${url%/ipxe/entry.ipxe}
            lm image ipxe-disk --appliance-url "$base" "$WORK/lm-boot.img" > "$WORK/logs/ipxe-disk-lm.out" 2>&1 \
                || { cat "$WORK/logs/ipxe-disk-lm.out" >&2; die "image ipxe-disk failed"; }
        fi
        arg=$WORK/lm-boot.img
    fi
    drop_caches
    boot_vm "$run" "$mode" "$arg" "$mac"
    mount_counters "$MOUNT_ID" | sed "s/^/$run.boot./" >> "$WORK/figures"
    python3 - "$WORK/figures" "$run" <<'PY' >&2
import sys
f = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[1]) if "=" in l)
r = sys.argv[2]
tag = r.split(".")[0]
alloc = int(f[tag + ".allocated"])
for when in ("prep", "boot"):
    b = int(f[f"{r}.{when}.bytes_recalled"])
    print(f"   recalled after {'mount --boot' if when == 'prep' else 'the boot  '}: {b / 2**20:7.1f} MiB "
          f"({100 * b / alloc:5.1f}% of {alloc / 2**20:.0f} MiB allocated), chunks "
          f"{f[f'{r}.{when}.recalled_chunks']}/{f[f'{r}.{when}.chunks_total']}")
PY
    drop_mount "$MOUNT_ID"
    daemon_alive || die "the livemount daemon died (log: $WORK/logs/daemon.log)"
}

tgt_boot() {
    local run=$1 mode=$2
    tgt_fresh_lun
    if [[ $mode == net ]]; then
        drop_caches
        boot_vm "$run" net "http://10.0.2.2:$WWW_PORT/tgt.ipxe" "$MAC_NET"
    else
        if [[ ! -f $WORK/tgt-boot.img ]]; then
            lm image ipxe-disk --appliance-url "http://10.0.2.2:$WWW_PORT" "$WORK/tgt-boot.img" \
                > "$WORK/logs/ipxe-disk-tgt.out" 2>&1 || { cat "$WORK/logs/ipxe-disk-tgt.out" >&2; die "image ipxe-disk failed"; }
        fi
        drop_caches
        boot_vm "$run" disk "$WORK/tgt-boot.img" "$MAC_DISK"
    fi
    kill -0 "$TGTD_PID" 2>/dev/null || die "tgtd died (log: $WORK/logs/tgtd.log)"
}

# ---------------------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------------------
report() {
    local versions
    versions="livemount $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); $(qemu-system-x86_64 --version | head -1);"
    versions+=" tgt $(dpkg-query -W -f '${Version}' tgt 2>/dev/null || echo '?'); ipxe-qemu $(dpkg-query -W -f '${Version}' ipxe-qemu 2>/dev/null || echo '?')"
    WORK="$WORK" RESULTS="$RESULTS" GUEST="$GUEST" CACHE_DROPS="$CACHE_DROPS" NPROC="$(nproc)" VERSIONS="$versions" \
    N="$N" PATHS="$PATHS" SWEEP="$SWEEP_TAGS" LOAD="$LOAD_START -> $(cut -d' ' -f1 /proc/loadavg)" \
    GUEST_DATA="$GUEST_DATA" python3 - <<'PY'
import json, os, re, statistics, time

env = os.environ
work = env["WORK"]
MiB = 1 << 20
figs = {}
for line in open(os.path.join(work, "figures")):
    k, v = line.rstrip("\n").split("=", 1)
    try:
        figs[k] = int(v)
    except ValueError:
        try:
            figs[k] = float(v)
        except ValueError:
            figs[k] = v
boots = [json.loads(l) for l in open(os.path.join(work, "boots.jsonl"))] if os.path.exists(os.path.join(work, "boots.jsonl")) else []

def sub(prefix):
    return {k[len(prefix):]: v for k, v in figs.items() if k.startswith(prefix)}

def med(xs, digits=2):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), digits) if xs else None

res = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "cores": int(env["NPROC"]),
    "versions": env["VERSIONS"],
    "cold_cache": env["CACHE_DROPS"] == "yes",
    "load_average": env["LOAD"],
    "guest": {"path": env["GUEST"], "size": os.stat(env["GUEST"]).st_size, "data_bytes": int(env["GUEST_DATA"])},
    "rounds": int(env["N"]),
    "copy": sub("copy."),
    "libraries": {},
    "boots": [],
    "paths": {},
    "sweep": [],
}
for tag in ["main"] + env["SWEEP"].split():
    L = {k: figs[f"{tag}.{k}"] for k in ("chunk_size", "chunk_count", "zero_chunks", "allocated", "backup_s")
         if f"{tag}.{k}" in figs}
    if L:
        res["libraries"][tag] = L

for b in boots:
    run = b["name"]
    tag = run.split(".")[0]
    path = run.split(".")[1]
    e = dict(b, library=tag, path=path)
    if f"{run}.prep_s" in figs:
        alloc = figs[f"{tag}.allocated"]
        e["prep_s"] = figs[f"{run}.prep_s"]
        e["recall"] = {}
        for when in ("prep", "boot"):
            c = sub(f"{run}.{when}.")
            c["share_of_allocated"] = round(c["bytes_recalled"] / alloc, 4)
            e["recall"]["after_mount_boot" if when == "prep" else "after_boot"] = c
        e["recall"]["boot_only_bytes"] = e["recall"]["after_boot"]["bytes_recalled"] - e["recall"]["after_mount_boot"]["bytes_recalled"]
    res["boots"].append(e)

for path in env["PATHS"].split():
    bs = [b for b in res["boots"] if b["library"] == "main" and b["path"] == path]
    if not bs:
        continue
    ok = [b for b in bs if b["ok"]]
    p = {"boots": len(bs), "ok": len(ok)}
    for k in ("kernel_s", "iscsistart_s", "marker_s", "exit_s", "prep_s"):
        v = med([b.get(k) for b in ok])
        if v is not None:
            p[k] = v
    if ok and "recall" in ok[0]:
        for when in ("after_mount_boot", "after_boot"):
            p[f"recalled_{when}"] = med([b["recall"][when]["bytes_recalled"] for b in ok])
            p[f"share_{when}"] = med([b["recall"][when]["share_of_allocated"] for b in ok], 4)
    res["paths"][path] = p

for tag in env["SWEEP"].split():
    bs = [b for b in res["boots"] if b["library"] == tag]
    for b in bs:
        res["sweep"].append({"library": tag, "chunk_size": res["libraries"][tag]["chunk_size"],
                             "allocated": res["libraries"][tag]["allocated"], "ok": b["ok"],
                             "marker_s": b.get("marker_s"), "prep_s": b.get("prep_s"),
                             "recall": b.get("recall")})

print()
print("=" * 110)
print(f"livemount boot benchmark  {res['date']}  ({res['cores']} cores, QEMU TCG; page cache "
      f"{'dropped before every boot' if res['cold_cache'] else 'NOT dropped: WARM figures'})")
print(f"versions: {res['versions']}")
print(f"load average (1 min) at start -> end: {res['load_average']}  (figures need a quiet machine)")
g = res["guest"]
print(f"guest {g['path']}: {g['size'] / MiB:,.0f} MiB, {g['data_bytes'] / MiB:,.0f} MiB in data extents")
for tag, L in res["libraries"].items():
    print(f"library {tag:<5} chunk size {L['chunk_size'] // 1024} KiB: {L['chunk_count']} chunks, {L['zero_chunks']} zero; "
          f"allocated (non-zero chunks) {L['allocated'] / MiB:,.0f} MiB; backup {L.get('backup_s', 0):.1f} s")
c = res["copy"]
if c:
    print(f"tgt disk: the prepared guest copied out of a boot mount in {c.get('copy_s', 0):.1f} s "
          f"({c.get('data_bytes', 0) / MiB:,.0f} MiB of data), served by tgtd as LUN 1, a fresh copy per boot")

def s(v):
    return "-" if v is None else f"{v:7.1f} s"
print()
print(f"boots (median of {res['rounds']} per path; seconds from QEMU's start; prep = mount --boot):")
hdr = (f"{'path':<9} {'ok':>4} {'prep':>9} {'kernel':>9} {'iscsistart':>11} {'marker':>9} {'exit':>9}"
       f" {'recalled after prep':>22} {'after boot':>20}")
print(hdr)
print("-" * len(hdr))
alloc = res["libraries"]["main"]["allocated"]
for path, p in res["paths"].items():
    r1 = r2 = ""
    if "recalled_after_boot" in p:
        r1 = f"{p['recalled_after_mount_boot'] / MiB:7.1f} MiB {100 * p['share_after_mount_boot']:5.1f}%"
        r2 = f"{p['recalled_after_boot'] / MiB:7.1f} MiB {100 * p['share_after_boot']:5.1f}%"
    print(f"{path:<9} {p['ok']:>2}/{p['boots']:<1} {s(p.get('prep_s')):>9} {s(p.get('kernel_s')):>9} "
          f"{s(p.get('iscsistart_s')):>11} {s(p.get('marker_s')):>9} {s(p.get('exit_s')):>9} {r1:>22} {r2:>20}")
print(f"(recalled: bytes_recalled of the mount's disk (non-zero chunks) against the allocated data, "
      f"{alloc / MiB:,.0f} MiB; 'after boot' includes the preparation)")
print()
print("every boot:")
for b in res["boots"]:
    rc = ""
    if "recall" in b:
        rc = (f"  recalled {b['recall']['after_mount_boot']['bytes_recalled'] / MiB:.1f} -> "
              f"{b['recall']['after_boot']['bytes_recalled'] / MiB:.1f} MiB, chunks "
              f"{b['recall']['after_boot']['recalled_chunks']}/{b['recall']['after_boot']['chunks_total']}")
    print(f"  {b['name']:<16} marker {s(b.get('marker_s'))} exit {s(b.get('exit_s'))} "
          f"{'ok' if b['ok'] else 'FAILED'}{rc}")

goals = []
def goal(label, value, target, met, unit="x"):
    goals.append({"goal": label, "value": value, "target": target, "met": met})
    v = f"{value:6.2f}{unit}" if value is not None else "     -"
    print(f"  {label:<58} {v}   goal {target:<8} {'MET' if met else 'NOT MET'}")
print()
print("goals:")
P = res["paths"]
for lm_, tg in (("lm-net", "tgt-net"), ("lm-disk", "tgt-disk")):
    if P.get(lm_, {}).get("marker_s") and P.get(tg, {}).get("marker_s"):
        r = P[lm_]["marker_s"] / P[tg]["marker_s"]
        goal(f"boot to the marker, {lm_} / {tg}", r, "<= 1.2x", r <= 1.2)
        r2 = P[lm_]["exit_s"] / P[tg]["exit_s"]
        print(f"    (to QEMU's exit: {r2:.2f}x; with mount --boot's {P[lm_].get('prep_s', 0):.0f} s preparation "
              f"added to livemount: {(P[lm_]['marker_s'] + P[lm_].get('prep_s', 0)) / P[tg]['marker_s']:.2f}x)")
for path in ("lm-net", "lm-disk"):
    p = P.get(path, {})
    if "share_after_boot" in p:
        v = 100 * p["share_after_boot"]
        goal(f"recalled by mount --boot + boot ({path}), % of allocated", v, "<= 15%", v <= 15, "%")
        print(f"    (mount --boot alone: {100 * p['share_after_mount_boot']:.1f}%; the boot alone: "
              f"{100 * (p['share_after_boot'] - p['share_after_mount_boot']):.1f}%)")
res["goals"] = goals

if res["sweep"] or "main" in res["libraries"]:
    print()
    print("recall by chunk size (lm-net boots; % of each library's allocated data):")
    hdr = f"{'chunk':>7} {'allocated':>11} {'after mount --boot':>26} {'after boot':>26} {'marker':>9}"
    print(hdr)
    print("-" * len(hdr))
    rows = [{"library": "main", "chunk_size": res["libraries"]["main"]["chunk_size"], "allocated": alloc,
             "recall": b.get("recall"), "marker_s": b.get("marker_s"), "ok": b["ok"]}
            for b in res["boots"] if b["library"] == "main" and b["path"] == "lm-net"] + res["sweep"]
    for r in rows:
        if not r.get("recall"):
            continue
        a, b = r["recall"]["after_mount_boot"], r["recall"]["after_boot"]
        print(f"{r['chunk_size'] // 1024:>5} K {r['allocated'] / MiB:>7,.0f} MiB "
              f"{a['bytes_recalled'] / MiB:>9.1f} MiB {100 * a['share_of_allocated']:>5.1f}% "
              f"{a['recalled_chunks']:>5}/{a['chunks_total']:<5} "
              f"{b['bytes_recalled'] / MiB:>7.1f} MiB {100 * b['share_of_allocated']:>5.1f}% "
              f"{b['recalled_chunks']:>5}/{b['chunks_total']:<5} {s(r.get('marker_s')):>9}"
              f"{'' if r['ok'] else ' FAILED'}")

# The daemon's warnings and errors.
dl = os.path.join(work, "logs", "daemon.log")
issues = []
if os.path.exists(dl):
    for l in open(dl, errors="replace"):
        l = re.sub(r"\x1b\[[0-9;]*m", "", l).rstrip()
        if re.search(r"\b(WARN|ERROR)\b", l):
            issues.append(l)
res["daemon_issues"] = issues[:200]
print()
print(f"daemon warnings/errors: {len(issues)}")
for l in issues[:15]:
    print("  " + l[:200])

json.dump(res, open(env["RESULTS"], "w"), indent=2)
print()
print(f"results written to {env['RESULTS']}")
PY
}

# ---------------------------------------------------------------------------------------------------------
main() {
    local round path tag cs
    ensure_tools
    prepare_guest
    build_livemount
    mkdir -p "$CACHE"
    WORK=$(mktemp -d "$CACHE/boot-run.XXXXXX")
    mkdir -p "$WORK/logs"
    : > "$WORK/figures"
    LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
    if (( $(echo "$LOAD_START > 0.7" | bc -l) )); then
        echo "bench: WARNING: load average $LOAD_START before the run: other work will skew the timings" >&2
    fi
    write_boot_helper
    GUEST_DATA=$(data_bytes "$GUEST")

    log "main library (chunk size ${CHUNK_SIZE:-default}): backup of $GUEST"
    make_library main "$CHUNK_SIZE"
    start_daemon "$WORK/lib-main"
    prepare_tgt_disk
    start_tgtd
    start_www

    for round in $(seq 1 "$N"); do
        log "round $round of $N: $PATHS"
        for path in $PATHS; do
            case $path in
                lm-net) lm_boot "main.lm-net.$round" net ;;
                lm-disk) lm_boot "main.lm-disk.$round" disk ;;
                tgt-net) tgt_boot "main.tgt-net.$round" net ;;
                tgt-disk) tgt_boot "main.tgt-disk.$round" disk ;;
                *) die "unknown path $path (BENCH_PATHS)" ;;
            esac
        done
    done
    stop_tgtd
    rm -f "$WORK/tgt.img"

    SWEEP_TAGS=""
    local main_cs
    main_cs=$(grep '^main.chunk_size=' "$WORK/figures" | cut -d= -f2)
    for cs in $SWEEP_SIZES; do
        tag=cs$cs
        if [[ $(numfmt --from=iec "$cs") == "$main_cs" ]]; then
            echo "   sweep: $cs is the main library's chunk size (its lm-net boots above)" >&2
            continue
        fi
        log "recall sweep: chunk size $cs"
        stop_daemon
        make_library "$tag" "$cs"
        start_daemon "$WORK/lib-$tag"
        lm_boot "$tag.lm-net.1" net
        rm -rf "$WORK/lib-$tag"
        SWEEP_TAGS+=" $tag"
    done
    report
}

main "$@"
