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
#     two sides boot the same guest, only the target differs. This first boot mount of the backup also keeps
#     the prepared guest as a version of the backup, so every lm boot below is a later boot mount: it mounts
#     that version and prepares nothing (goals: the first mount --boot ready < 15 s having recalled at most
#     10% of the allocated data, a later one < 2 s, a
#     later one plus its boot to the marker <= 1.2x tgt's boot);
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
# shellcheck source=bench/lib.sh
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
LM_LIB=""        # the library the daemon serves
DAEMON_PID=""    # the livemount daemon
TGTD_PID=""      # tgtd
WWW_PID=""       # python3 -m http.server
BOOT_PID=""      # the boot helper (python) of the boot under way
LM_MOUNTS=()     # livemount mount ids to unmount

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
    python3 "$REPORT_PY" library-figures "$WORK/show-$tag.json" "$tag" >> "$WORK/figures"
    echo "   library $tag: $(grep "^$tag\.\(chunk_size\|chunk_count\|zero_chunks\|allocated\)=" "$WORK/figures" \
        | sed "s/^$tag\.//" | tr '\n' ' ')" >&2
}

start_daemon() {  # start_daemon LIB
    LM_LIB=$1
    port_free "$LM_PORT" || die "port $LM_PORT is in use (set BENCH_LM_PORT)"
    port_free "$LM_HTTP" || die "port $LM_HTTP is in use (set BENCH_LM_HTTP)"
    mkdir -p "$WORK/state" "$WORK/fs"
    echo "---- daemon on $LM_LIB" >> "$WORK/logs/daemon.log"
    serve_daemon --state-dir "$WORK/state" --fuse-root "$WORK/fs" --portal "127.0.0.1:$LM_PORT" \
        --http "127.0.0.1:$LM_HTTP" --advertise 10.0.2.2 --guest-packages "$PACKAGES"
}

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
    mount_counters "$MOUNT_ID" first-disk | sed "s/^/$name.prep./" >> "$WORK/figures"
}

# ---------------------------------------------------------------------------------------------------------
# The tgt side: the prepared guest copied out of a boot mount, tgtd, the local HTTP server for its scripts.
# ---------------------------------------------------------------------------------------------------------
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
    python3 "$REPORT_PY" boot-run "$run" "$BOOT_TIMEOUT" "$WORK/logs/console-$run.log" "$WORK/qemu.pid" -- "${args[@]}" \
        > "$WORK/boot-$run.json" 2> "$WORK/logs/boot-$run.err" &
    BOOT_PID=$!
    wait "$BOOT_PID" || true
    BOOT_PID=""
    line=$(cat "$WORK/boot-$run.json")
    [[ -n $line ]] || { cat "$WORK/logs/boot-$run.err" >&2; die "the boot helper failed for $run"; }
    echo "$line" >> "$WORK/boots.jsonl"
    BOOT_OK=$(python3 "$REPORT_PY" boot-verdict "$WORK/boot-$run.json")
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
    mount_counters "$MOUNT_ID" first-disk | sed "s/^/$run.boot./" >> "$WORK/figures"
    python3 "$REPORT_PY" boot-recall "$WORK/figures" "$run" >&2
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
    N="$N" PATHS="$PATHS" SWEEP="$SWEEP_TAGS" LOAD="$(load_span)" \
    GUEST_DATA="$GUEST_DATA" python3 "$REPORT_PY" summary-boot
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
    load_prologue
    GUEST_DATA=$(data_bytes "$GUEST")

    log "main library (chunk size ${CHUNK_SIZE:-default}): backup of $GUEST"
    make_library main "$CHUNK_SIZE"
    start_daemon "$WORK/lib-main"
    prepare_tgt_disk
    start_tgtd ""   # no LUN yet: each boot gets a fresh copy as LUN 1 (tgt_fresh_lun)
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
