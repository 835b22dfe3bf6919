#!/usr/bin/env bash
# Cloud benchmark, against the local AWS stand-in (tests/aws/standin: moto extended as AWS documents it), in
# one run:
#
#   upload  `livemount cloud image ipxe` (build the EC2 iPXE disk, upload it through EBS direct, wait for the
#           snapshot, register and share the image) against `coldsnap upload --wait` of the very same disk
#           (read back from our snapshot with boto3) to the same stand-in; BENCH_UPLOADS rounds, the two
#           alternating, the appliance's image removed (`cloud cleanup --images`) before each of its rounds so
#           that each one uploads; coldsnap also without --wait (its waiter polls on its own schedule).
#           Throughput = the disk's non-zero bytes / the median time. Goal: livemount's
#           time <= coldsnap's (ratio coldsnap/livemount >= 1), although livemount also builds and
#           registers.
#   boot    the cloud live mount's boot in the QEMU simulation of an EC2 instance (as tests/tests/cloud_boot.rs
#           does: the image's root snapshot as the disk, tests/aws/imds at 169.254.169.254, the appliance at
#           169.254.169.2): the time from `mount --boot --cloud member` to the guest's marker, and from QEMU's
#           start to the marker; against tgt serving a copy of the same prepared guest (copied out of a cloud
#           mount before any boot), booted through the same iPXE image and metadata path (its user-data
#           chains to a script that sanboots tgt). Goal: livemount <= 1.2x tgt; both ratios printed: the
#           whole time (mount, preparation included) and the boot alone.
#   backup  a streaming backup (`cloud backup INSTANCE --account member --access-node NODE`) of a member
#           instance launched from a real disk (the Debian guest when it is in its cache, else an ext4 of
#           /usr/lib; uploaded through EBS direct by `awsq launch`) against a local `backup create` of the
#           same volume file, each into an empty library (the daemon's own backup forgotten and collected
#           between rounds); BENCH_BACKUPS rounds, alternating. The difference is the orchestration's cost
#           (CreateImage, share, CreateVolume, attach, the device, detach, delete, deregister). Goal: cloud
#           backup <= 1.1x the local backup at the stand-in's speed (both read the volume warm: the
#           job's volume was just written by the stand-in). The stand-in copies whole files
#           where AWS copies lazily (CreateImage: volume to snapshot; CreateVolume: snapshot to volume),
#           so the time the stand-in spent answering (its counters) is recorded too, and the job's own
#           time (cloud backup minus the stand-in's) is compared as well.
#   restore restore to an image (`cloud restore BACKUP --account member --as-image`: each disk of the backup
#           written into a snapshot through EBS direct, registered, shared) against `coldsnap upload --wait`
#           of the same disk restored to a raw file first (`backup restore`, not timed); BENCH_RESTORES
#           rounds, alternating, each round's image and snapshots removed after. Throughput = the disk's
#           allocated bytes / the median time. Goal: livemount's throughput >= coldsnap's (ratio
#           livemount/coldsnap >= 1), although livemount also registers and shares an image.
#   snapshot  an EBS snapshot of a member's disk backed up with no volume (`backup create ebs:SNAP --account
#           member`: EBS direct, only the listed blocks) against `coldsnap download` of the same snapshot
#           through the same stand-in (goal: coldsnap's time / livemount's >= 1.5); then the incremental of a
#           child snapshot with 1% of the disk's allocated blocks rewritten (ListChangedBlocks: only those
#           read) against that full backup (goal: full / incremental >= 20). BENCH_SNAPSHOTS rounds, each
#           into an empty library, alternating with coldsnap. The stand-in answers one call at a time, so the
#           seconds it spent answering GetSnapshotBlock (its counters) are the floor of both, recorded beside
#           each. Then cold random 4 KiB reads through the FUSE file of `mount ebs:SNAP --account member`
#           (O_DIRECT, BENCH_SNAPSHOT_READS offsets each in a block of its own, so every read recalls a block)
#           against one GetSnapshotBlock round trip of the same blocks (a bare HTTP GET on a kept-alive
#           connection, nothing but the call): median and p99 of each (goal: median at most 1.5x).
#   far     a store far away: a member's disk as an EBS snapshot, live-mounted (`mount ebs:SNAP`) through a
#           relay that adds BENCH_FAR_DELAY_MS (20) to every request to the stand-in (bench/delay_relay.py),
#           and, for reference, straight to the stand-in; each a fresh daemon and mount, nothing recalled.
#           The whole disk read cold through the mount's FUSE file with fio (1 MiB sequential, O_DIRECT, 16
#           in flight), then compared with the disk (cmp). Throughput = the bytes recalled (the snapshot's
#           listed blocks; unlisted ones are zeros without a request) / fio's time, and the disk's size / that
#           time. Goal: at least 100 MiB/s recalled with the delay. Then (the Debian guest as the disk) a boot
#           of each: `mount ebs:SNAP --account member --boot` (the preparation reads the disk through the same
#           store), the page cache dropped, QEMU's iPXE sanboots the mount's script; the time of the mount and
#           from QEMU's start to the guest's marker. Goal: the delayed boot at most 1.5x the direct one.
# It cleans up everything it started and writes $BENCH_CACHE/cloud-results.json.
#
# Usage:  sudo bench/cloud.sh        (root: FUSE, tgtd, the guest image)
# Env:
#   BENCH_CACHE=DIR          results folder (default /var/cache/livemount-bench)
#   BENCH_UPLOADS=3          upload rounds
#   BENCH_BOOTS=1            boot rounds (each boots livemount, then tgt)
#   BENCH_BACKUPS=3          streaming backup rounds
#   BENCH_RESTORES=3         restore-to-image rounds
#   BENCH_SNAPSHOTS=3        snapshot backup rounds
#   BENCH_SNAPSHOT_READS=300 cold random 4 KiB reads through a mounted snapshot
#   BENCH_PARTS="upload boot backup restore snapshot far"  what to run
#   BENCH_FAR_DELAY_MS=20    the delay the relay adds to each request of the far part
#   BENCH_BOOT_TIMEOUT=900   seconds one boot may take
#   BENCH_LM_PORT=3293 BENCH_LM_HTTP=8293 BENCH_TGT_PORT=3294 BENCH_TGT_CONTROL=3295 BENCH_WWW_PORT=8294
#   BENCH_NO_BUILD=1         use target/release/livemount as it is
#   BENCH_KEEP_WORK=1        keep the run's folder
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BENCH_CACHE:-/var/cache/livemount-bench}
GUEST_CACHE=/var/cache/livemount-guest
GUEST=$GUEST_CACHE/bookworm.img
PACKAGES=$GUEST_CACHE/guest-packages
UPLOADS=${BENCH_UPLOADS:-3}
BOOTS=${BENCH_BOOTS:-1}
BACKUPS=${BENCH_BACKUPS:-3}
RESTORES=${BENCH_RESTORES:-3}
SNAPSHOTS=${BENCH_SNAPSHOTS:-3}
SNAPSHOT_READS=${BENCH_SNAPSHOT_READS:-300}
PARTS=${BENCH_PARTS:-upload boot backup restore snapshot far}
FAR_DELAY_MS=${BENCH_FAR_DELAY_MS:-20}
BOOT_TIMEOUT=${BENCH_BOOT_TIMEOUT:-900}
LM_PORT=${BENCH_LM_PORT:-3293}
LM_HTTP=${BENCH_LM_HTTP:-8293}
TGT_PORT=${BENCH_TGT_PORT:-3294}
TGT_CONTROL=${BENCH_TGT_CONTROL:-3295}
WWW_PORT=${BENCH_WWW_PORT:-8294}
RESULTS=$CACHE/cloud-results.json
LIVEMOUNT=$ROOT/target/release/livemount
TGT_IQN=iqn.2026-11.io.livemount.bench:cloud-tgt
APPLIANCE=169.254.169.2
SERVICE=123456789012
MEMBER=111111111111
AWSQ=$ROOT/tests/aws/awsq
IMDS=$ROOT/tests/aws/imds
COLDSNAP=$CACHE/coldsnap/bin/coldsnap

WORK="" LM_LIB="" DAEMON_PID="" TGTD_PID="" WWW_PID="" STANDIN_PID="" BOOT_PID="" RELAY_PID=""
LM_MOUNTS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $BOOT_PID ]] && stop_pid "$BOOT_PID" TERM 10
    stop_tgtd
    [[ -n $WWW_PID ]] && stop_pid "$WWW_PID" TERM 10
    stop_daemon
    [[ -n $RELAY_PID ]] && stop_pid "$RELAY_PID" TERM 10
    [[ -n $STANDIN_PID ]] && stop_pid "$STANDIN_PID" TERM 10
    remove_work
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_tools() {
    install_missing qemu-system-x86_64:qemu-system-x86 tgtd:tgt tgtadm:tgt python3:python3 bc:bc fusermount:fuse \
        ss:iproute2 curl:curl debugfs:e2fsprogs losetup:mount fio:fio cmp:diffutils
    [[ $(id -u) == 0 ]] || die "run as root (FUSE, tgtd, the guest image)"
    python3 -c 'import moto, sys; sys.exit(moto.__version__ != "5.2.1")' 2>/dev/null \
        || python3 -m pip install -q 'moto[server]==5.2.1'
    # A release build of its own (the tests' coldsnap is a debug build, which would be unfair to it).
    if [[ " $PARTS " == *" upload "* || " $PARTS " == *" restore "* || " $PARTS " == *" snapshot "* ]] && ! cargo install --list --root "$CACHE/coldsnap" 2>/dev/null | grep -q '^coldsnap v0\.12\.0:'; then
        echo "bench: installing coldsnap 0.12.0 (crates.io, release build) into $CACHE/coldsnap" >&2
        CARGO_TARGET_DIR=$CACHE/coldsnap/target cargo install -q --locked --version 0.12.0 --root "$CACHE/coldsnap" coldsnap
    fi
}

start_standin() {
    "$ROOT/tests/aws/standin" --port 0 --data "$WORK/aws" > "$WORK/logs/standin.out" 2> "$WORK/logs/standin.log" &
    STANDIN_PID=$!
    local port=""
    for _ in $(seq 1 300); do
        port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/logs/standin.out")
        [[ -n $port ]] && break
        kill -0 "$STANDIN_PID" 2>/dev/null || { cat "$WORK/logs/standin.log" >&2; die "the stand-in exited"; }
        sleep 0.1
    done
    [[ -n $port ]] || die "the stand-in did not come up"
    # The AWS SDK (ours and coldsnap's) and boto3 go to the stand-in, with dummy credentials, and nowhere else.
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
        AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
        AWS_SHARED_CREDENTIALS_FILE=/dev/null
    unset AWS_PROFILE AWS_SESSION_TOKEN
}

awsq() { "$AWSQ" --endpoint "$AWS_ENDPOINT_URL" "$@"; }

# The seconds the stand-in has spent answering calls so far (all actions).
standin_seconds() {
    curl -sf "$AWS_ENDPOINT_URL/standin/counters" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["seconds"].values()))'
}

# The seconds the stand-in has spent answering one action so far.
standin_action_seconds() {
    curl -sf "$AWS_ENDPOINT_URL/standin/counters" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"].get(sys.argv[1], 0))' "$1"
}

# ---------------------------------------------------------------------------------------------------------
# Upload.
# ---------------------------------------------------------------------------------------------------------
bench_upload() {
    local i t0 snap
    log "upload: cloud image ipxe against coldsnap upload --wait of the same disk, $UPLOADS rounds"
    for i in $(seq 1 "$UPLOADS"); do
        lm --json cloud cleanup --images > /dev/null
        t0=$(now)
        lm --json cloud image ipxe > "$WORK/image-$i.json" 2> "$WORK/logs/image-$i.err" \
            || { cat "$WORK/logs/image-$i.err" >&2; die "cloud image ipxe failed"; }
        rec "upload.lm.$i" "$(since "$t0")"
        # The upload alone, as the command measured it (snapshot upload, wait, register; not the disk build).
        rec "upload.lm_upload.$i" "$(json_get "$WORK/image-$i.json" upload_seconds)"
        [[ $(json_get "$WORK/image-$i.json" bytes_uploaded) -gt 0 ]] || die "round $i uploaded nothing"
        if [[ $i == 1 ]]; then
            snap=$(json_get "$WORK/image-1.json" snapshot_id)
            awsq read-snapshot "$SERVICE" "$snap" "$WORK/ipxe-disk.img" > /dev/null
            # The snapshot's volume is whole GiB; the disk is what livemount built and uploaded.
            truncate -s "$(json_get "$WORK/image-1.json" disk_bytes)" "$WORK/ipxe-disk.img"
            rec upload.disk_bytes "$(stat -c %s "$WORK/ipxe-disk.img")"
            rec upload.nonzero_bytes "$(json_get "$WORK/image-1.json" bytes_uploaded)"
        fi
        t0=$(now)
        "$COLDSNAP" upload --wait "$WORK/ipxe-disk.img" > "$WORK/logs/coldsnap-$i.out" 2>&1 \
            || { cat "$WORK/logs/coldsnap-$i.out" >&2; die "coldsnap upload failed"; }
        rec "upload.coldsnap.$i" "$(since "$t0")"
        # Without --wait too: coldsnap's wait polls on its own schedule, which the stand-in cannot shorten.
        t0=$(now)
        "$COLDSNAP" upload "$WORK/ipxe-disk.img" > "$WORK/logs/coldsnap-nowait-$i.out" 2>&1 \
            || { cat "$WORK/logs/coldsnap-nowait-$i.out" >&2; die "coldsnap upload failed"; }
        rec "upload.coldsnap_nowait.$i" "$(since "$t0")"
        echo "   round $i: livemount $(grep "^upload.lm.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s," \
             "(upload $(grep "^upload.lm_upload.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s)," \
             "coldsnap --wait $(grep "^upload.coldsnap.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s," \
             "coldsnap alone $(grep "^upload.coldsnap_nowait.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s" >&2
    done
}

# ---------------------------------------------------------------------------------------------------------
# Boot.
# ---------------------------------------------------------------------------------------------------------
# boot_instance RUN USERDATA_ARGS...: QEMU as the EC2 instance (a fresh copy of the iPXE image's disk, the
# metadata stand-in with the given arguments), timed by report.py's boot-run; sets BOOT_OK.
boot_instance() {
    local run=$1 line
    shift
    cp --sparse=always "$WORK/ipxe-disk.img" "$WORK/instance-root.img"
    local imds="$IMDS $* --log $WORK/logs/imds-$run.jsonl"
    local args=(qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot
        -drive "file=$WORK/instance-root.img,format=raw,if=ide"
        -netdev "user,id=n0,net=169.254.169.0/24,host=$APPLIANCE,guestfwd=tcp:169.254.169.254:80-cmd:$imds"
        -device virtio-net-pci,netdev=n0 -boot c)
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
        tail -c 2000 "$WORK/logs/console-$run.log" | tr -d '\033' | tail -15 | sed 's/^/     | /' >&2
        die "$run did not boot to the marker"
    fi
}

cloud_mount() {  # cloud_mount NAME: sets MOUNT_ID, MOUNT_JSON, INSTANCE; records NAME.mount_s
    local name=$1 t0
    MOUNT_JSON=$WORK/mount-$name.json
    t0=$(now)
    lm --json mount guest --boot --cloud member > "$MOUNT_JSON" 2> "$WORK/logs/mount-$name.err" \
        || { cat "$WORK/logs/mount-$name.err" >&2; tail -20 "$WORK/logs/daemon.log" >&2; die "mount --cloud failed"; }
    rec "$name.mount_s" "$(since "$t0")"
    MOUNT_ID=$(json_get "$MOUNT_JSON" id)
    INSTANCE=$(json_get "$MOUNT_JSON" cloud instance_id)
    LM_MOUNTS+=("$MOUNT_ID")
}

prepare_tgt() {
    local file initiator
    log "tgt: a cloud mount's prepared disk copied out through its FUSE file, before any boot"
    cloud_mount copy
    file=$(json_get "$MOUNT_JSON" disks 0 fuse_path)
    initiator=$(json_get "$MOUNT_JSON" boot initiator_iqn)
    cp --sparse=always "$file" "$WORK/tgt-pristine.img"
    drop_mount "$MOUNT_ID"
    [[ -n $(guest_stat "$WORK/tgt-pristine.img" /usr/sbin/iscsistart) ]] || die "the copied guest is not prepared"
    start_tgtd ""
    mkdir -p "$WORK/www"
    printf '#!ipxe\nset initiator-iqn %s\nsanboot --keep iscsi:%s::%s:1:%s\n' \
        "$initiator" "$APPLIANCE" "$TGT_PORT" "$TGT_IQN" > "$WORK/www/tgt.ipxe"
    printf '#!ipxe\nchain http://%s:%s/tgt.ipxe\n' "$APPLIANCE" "$WWW_PORT" > "$WORK/tgt-user-data.ipxe"
    port_free "$WWW_PORT" || die "port $WWW_PORT is in use (set BENCH_WWW_PORT)"
    python3 -m http.server "$WWW_PORT" --bind 127.0.0.1 --directory "$WORK/www" < /dev/null >> "$WORK/logs/www.log" 2>&1 &
    WWW_PID=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$WWW_PORT/tgt.ipxe" > /dev/null && return 0; sleep 0.1; done
    die "the local HTTP server did not come up"
}

bench_boot() {
    local i
    lm --json cloud image ipxe --share-with member > "$WORK/image.json"
    awsq read-snapshot "$SERVICE" "$(json_get "$WORK/image.json" snapshot_id)" "$WORK/ipxe-disk.img" > /dev/null
    prepare_tgt
    for i in $(seq 1 "$BOOTS"); do
        log "boot round $i of $BOOTS: livemount (mount --boot --cloud, then the instance), then tgt"
        cloud_mount "lm.$i"
        drop_caches
        boot_instance "lm.$i" --endpoint "$AWS_ENDPOINT_URL" --account "$MEMBER" --instance "$INSTANCE"
        drop_mount "$MOUNT_ID"
        [[ $(awsq instance "$MEMBER" "$INSTANCE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])') \
            == terminated ]] || die "unmount did not terminate $INSTANCE"
        tgt_fresh_lun
        drop_caches
        boot_instance "tgt.$i" --user-data "$WORK/tgt-user-data.ipxe"
    done
}

# ---------------------------------------------------------------------------------------------------------
# Streaming backup.
# ---------------------------------------------------------------------------------------------------------
# member_disk FILE: the member instance's root disk: the Debian guest when it is in its cache, else real
# files as a root disk has them (an ext4 of /usr/lib).
member_disk() {
    if [[ -f $GUEST ]]; then
        cp --sparse=always "$GUEST" "$1"
    else
        mkfs.ext4 -q -F -d /usr/lib "$1" "$(( $(du -sm /usr/lib | cut -f1) * 5 / 4 + 256 ))M"
    fi
}

bench_backup() {
    local disk=$WORK/member-root.img i t0 s0 volume instance node id
    member_disk "$disk"
    log "backup: a member instance launched from a $(( $(stat -c %s "$disk") >> 20 )) MiB disk (EBS direct upload)"
    awsq launch "$MEMBER" --disk "$disk" --name bench-web > "$WORK/member.json"
    awsq launch "$SERVICE" --name access-node > "$WORK/node.json"
    instance=$(json_get "$WORK/member.json" instance)
    node=$(json_get "$WORK/node.json" instance)
    volume=$WORK/aws/volumes/$(json_get "$WORK/member.json" volumes /dev/xvda).img
    rec backup.disk_bytes "$(stat -c %s "$volume")"
    LM_LIB=$WORK/backup-library
    "$LIVEMOUNT" --library "$LM_LIB" library init > /dev/null
    mkdir -p "$WORK/backup-state" "$WORK/backup-fs"
    serve_daemon --state-dir "$WORK/backup-state" --fuse-root "$WORK/backup-fs" --portal 127.0.0.1:0 \
        --http 127.0.0.1:0 --ebs-devices "$WORK/aws/devices"
    lm cloud account add member --role-arn "arn:aws:iam::$MEMBER:role/livemount-access" > /dev/null
    for i in $(seq 1 "$BACKUPS"); do
        "$LIVEMOUNT" --library "$WORK/local-library" library init > /dev/null
        # The job reads a volume the stand-in has just written (in the page cache); the local side reads
        # the same file warm too, so that neither is favoured.
        drop_caches
        cat "$volume" > /dev/null
        t0=$(now)
        "$LIVEMOUNT" --library "$WORK/local-library" backup create "$volume" > /dev/null
        rec "backup.local.$i" "$(since "$t0")"
        rm -rf "$WORK/local-library"
        drop_caches
        s0=$(standin_seconds)
        t0=$(now)
        lm --json cloud backup "$instance" --account member --access-node "$node" --no-reboot \
            > "$WORK/backup-$i.json" 2> "$WORK/logs/backup-$i.err" \
            || { cat "$WORK/logs/backup-$i.err" >&2; tail -20 "$WORK/logs/daemon.log" >&2; die "cloud backup failed"; }
        rec "backup.cloud.$i" "$(since "$t0")"
        rec "backup.standin.$i" "$(echo "$(standin_seconds) - $s0" | bc -l)"
        id=$(json_get "$WORK/backup-$i.json" result id)
        [[ $(awsq resources "$MEMBER" | python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if "livemount:job" in r.get("tags", {})))') == 0 ]] \
            || die "round $i left resources of its job in the member account"
        lm backup forget "$id" > /dev/null
        lm library gc > /dev/null
        echo "   round $i: local backup create $(grep "^backup.local.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s," \
             "cloud backup $(grep "^backup.cloud.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s" \
             "(the stand-in answering: $(grep "^backup.standin.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s)" >&2
    done
    stop_daemon
}

# ---------------------------------------------------------------------------------------------------------
# Restore to an image.
# ---------------------------------------------------------------------------------------------------------
bench_restore() {
    local disk=$WORK/restore-root.img i t0 instance node id image
    member_disk "$disk"
    log "restore: a backup of a $(( $(stat -c %s "$disk") >> 20 )) MiB instance disk restored as an image, against coldsnap"
    awsq launch "$MEMBER" --disk "$disk" --name bench-restore > "$WORK/restore-member.json"
    awsq launch "$SERVICE" --name access-node > "$WORK/restore-node.json"
    instance=$(json_get "$WORK/restore-member.json" instance)
    node=$(json_get "$WORK/restore-node.json" instance)
    LM_LIB=$WORK/restore-library
    "$LIVEMOUNT" --library "$LM_LIB" library init > /dev/null
    mkdir -p "$WORK/restore-state" "$WORK/restore-fs"
    serve_daemon --state-dir "$WORK/restore-state" --fuse-root "$WORK/restore-fs" --portal 127.0.0.1:0 \
        --http 127.0.0.1:0 --ebs-devices "$WORK/aws/devices"
    lm cloud account add member --role-arn "arn:aws:iam::$MEMBER:role/livemount-access" > /dev/null
    lm --json cloud backup "$instance" --account member --access-node "$node" --no-reboot > "$WORK/restore-backup.json"
    id=$(json_get "$WORK/restore-backup.json" result id)
    "$LIVEMOUNT" --library "$LM_LIB" backup restore "$id" --disk 0 "$WORK/restore-raw.img" > /dev/null
    rec restore.disk_bytes "$(stat -c %s "$WORK/restore-raw.img")"
    rec restore.allocated_bytes "$(( $(du -B1 "$WORK/restore-raw.img" | cut -f1) ))"
    for i in $(seq 1 "$RESTORES"); do
        drop_caches
        t0=$(now)
        lm --json cloud restore "$id" --account member --as-image > "$WORK/restore-$i.json" 2> "$WORK/logs/restore-$i.err" \
            || { cat "$WORK/logs/restore-$i.err" >&2; tail -20 "$WORK/logs/daemon.log" >&2; die "cloud restore failed"; }
        rec "restore.lm.$i" "$(since "$t0")"
        rec "restore.lm_bytes.$i" "$(json_get "$WORK/restore-$i.json" result bytes_written)"
        image=$(json_get "$WORK/restore-$i.json" result image_id)
        # The image was handed over to the user: removed here by hand, as a user would.
        python3 - "$AWS_ENDPOINT_URL" "$image" <<'PY'
import sys, boto3
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-east-1")
img = ec2.describe_images(ImageIds=[sys.argv[2]])["Images"][0]
ec2.deregister_image(ImageId=sys.argv[2])
for m in img["BlockDeviceMappings"]:
    ec2.delete_snapshot(SnapshotId=m["Ebs"]["SnapshotId"])
PY
        drop_caches
        t0=$(now)
        "$COLDSNAP" upload --wait "$WORK/restore-raw.img" > "$WORK/logs/coldsnap-restore-$i.out" 2>&1 \
            || { cat "$WORK/logs/coldsnap-restore-$i.out" >&2; die "coldsnap upload failed"; }
        rec "restore.coldsnap.$i" "$(since "$t0")"
        echo "   round $i: cloud restore --as-image $(grep "^restore.lm.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s," \
             "coldsnap upload --wait $(grep "^restore.coldsnap.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s" >&2
    done
    stop_daemon
}

# ---------------------------------------------------------------------------------------------------------
# Snapshot backup through EBS direct.
# ---------------------------------------------------------------------------------------------------------
bench_snapshot() {
    local disk=$WORK/snap-disk.img child=$WORK/snap-child.img i t0 snap1 snap2 creds
    member_disk "$disk"
    cp --sparse=always "$disk" "$child"
    # 1% of the allocated 512 KiB blocks rewritten with new bytes, spread over the disk.
    python3 - "$child" <<'PY'
import os, sys
path, block = sys.argv[1], 512 << 10
with open(path, "r+b") as f:
    size = os.fstat(f.fileno()).st_size
    allocated = [b for b in range(size // block) if os.pread(f.fileno(), block, b * block).count(0) != block]
    for b in allocated[::100]:
        os.pwrite(f.fileno(), os.urandom(block), b * block)
    print(len(allocated[::100]), "of", len(allocated), "allocated blocks rewritten", file=sys.stderr)
PY
    log "snapshot: a $(( $(stat -c %s "$disk") >> 20 )) MiB disk as an EBS snapshot, backed up through EBS direct, against coldsnap download"
    snap1=$(awsq upload "$MEMBER" "$disk" | json_get - snapshot)
    snap2=$(awsq upload "$MEMBER" "$child" --parent "$snap1" --parent-file "$disk" | json_get - snapshot)
    rec snapshot.disk_bytes "$(stat -c %s "$disk")"
    rec snapshot.allocated_bytes "$(( $(du -B1 "$disk" | cut -f1) ))"
    creds=$(awsq credentials "$MEMBER")
    mkdir -p "$WORK/snap-state" "$WORK/snap-fs"
    LM_LIB=$WORK/snap-library
    "$LIVEMOUNT" --library "$LM_LIB" library init > /dev/null
    serve_daemon --state-dir "$WORK/snap-state" --fuse-root "$WORK/snap-fs" --portal 127.0.0.1:0 --http 127.0.0.1:0
    lm cloud account add member --role-arn "arn:aws:iam::$MEMBER:role/livemount-access" > /dev/null
    for i in $(seq 1 "$SNAPSHOTS"); do
        s0=$(standin_action_seconds GetSnapshotBlock)
        t0=$(now)
        lm --json backup create "ebs:$snap1" --account member > "$WORK/snap-full-$i.json" 2> "$WORK/logs/snap-full-$i.err" \
            || { cat "$WORK/logs/snap-full-$i.err" >&2; tail -20 "$WORK/logs/daemon.log" >&2; die "backup create ebs: failed"; }
        rec "snapshot.full.$i" "$(since "$t0")"
        rec "snapshot.full_standin.$i" "$(echo "$(standin_action_seconds GetSnapshotBlock) - $s0" | bc -l)"
        t0=$(now)
        lm --json backup create "ebs:$snap2" --account member > "$WORK/snap-incr-$i.json" 2> "$WORK/logs/snap-incr-$i.err" \
            || { cat "$WORK/logs/snap-incr-$i.err" >&2; die "the incremental backup failed"; }
        rec "snapshot.incremental.$i" "$(since "$t0")"
        [[ $(json_get "$WORK/snap-incr-$i.json" origin parent_backup) == $(json_get "$WORK/snap-full-$i.json" id) ]] \
            || die "round $i: the child snapshot's backup was not incremental"
        rec "snapshot.incremental_blocks.$i" "$(json_get "$WORK/snap-incr-$i.json" origin blocks_read)"
        for id in "$(json_get "$WORK/snap-incr-$i.json" id)" "$(json_get "$WORK/snap-full-$i.json" id)"; do
            lm backup forget "$id" > /dev/null
        done
        lm library gc > /dev/null
        rm -f "$WORK/snap-download.img"
        s0=$(standin_action_seconds GetSnapshotBlock)
        t0=$(now)
        env $(echo "$creds" | python3 -c 'import json,sys; print(" ".join(f"{k}={v}" for k, v in json.load(sys.stdin).items()))') \
            "$COLDSNAP" download "$snap1" "$WORK/snap-download.img" > "$WORK/logs/coldsnap-download-$i.out" 2>&1 \
            || { cat "$WORK/logs/coldsnap-download-$i.out" >&2; die "coldsnap download failed"; }
        rec "snapshot.coldsnap.$i" "$(since "$t0")"
        rec "snapshot.coldsnap_standin.$i" "$(echo "$(standin_action_seconds GetSnapshotBlock) - $s0" | bc -l)"
        rm -f "$WORK/snap-download.img"
        echo "   round $i: backup create ebs: $(grep "^snapshot.full.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s," \
             "incremental $(grep "^snapshot.incremental.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s," \
             "coldsnap download $(grep "^snapshot.coldsnap.$i=" "$WORK/figures" | cut -d= -f2 | cut -c1-5) s" >&2
    done
    snapshot_cold_reads "$disk" "$snap1" "$creds"
    stop_daemon
}

# snapshot_cold_reads DISK SNAP CREDS: cold random 4 KiB reads through a live-mounted snapshot of DISK
# against bare GetSnapshotBlock round trips of the same blocks (CREDS: the member's, as `awsq credentials`).
snapshot_cold_reads() {
    local disk=$1 snap=$2 creds=$3 id fuse
    python3 "$REPORT_PY" fuse-offsets "$disk" "$(( SNAPSHOT_READS * 4 ))" 7 "$WORK/snap-offsets-all.txt"
    # One read per 512 KiB block: each read is the first of its block, so each recalls one.
    python3 "$REPORT_PY" distinct-blocks "$WORK/snap-offsets-all.txt" 524288 "$SNAPSHOT_READS" "$WORK/snap-offsets.txt"
    lm --json mount "ebs:$snap" --account member > "$WORK/snap-mount.json" \
        || { tail -20 "$WORK/logs/daemon.log" >&2; die "mount ebs:$snap failed"; }
    id=$(json_get "$WORK/snap-mount.json" id)
    fuse=$(json_get "$WORK/snap-mount.json" disks 0 fuse_path)
    python3 "$REPORT_PY" fuse-reads "$fuse" "$WORK/snap-offsets.txt" "$WORK/snap-cold-reads.json"
    lm unmount "$id" > /dev/null
    python3 "$REPORT_PY" ebs-round-trips "$AWS_ENDPOINT_URL" "$creds" "$snap" "$WORK/snap-offsets.txt" \
        "$WORK/snap-round-trips.json"
    python3 "$REPORT_PY" fuse-pass "$WORK/snap-cold-reads.json" "mounted snapshot" >&2
    python3 "$REPORT_PY" fuse-pass "$WORK/snap-round-trips.json" "GetSnapshotBlock" >&2
}

# ---------------------------------------------------------------------------------------------------------
# Far: a snapshot read cold through a mount, with every request to the store delayed, and without.
# ---------------------------------------------------------------------------------------------------------
bench_far() {
    local disk=$WORK/far-disk.img snap relay_port endpoint=$AWS_ENDPOINT_URL how t0 url
    member_disk "$disk"
    snap=$(awsq upload "$MEMBER" "$disk" | json_get - snapshot)
    rec far.disk_bytes "$(stat -c %s "$disk")"
    rec far.delay_ms "$FAR_DELAY_MS"
    python3 "$ROOT/bench/delay_relay.py" --to "${endpoint#http://}" --delay-ms "$FAR_DELAY_MS" \
        > "$WORK/logs/relay.out" 2> "$WORK/logs/relay.err" &
    RELAY_PID=$!
    for _ in $(seq 1 100); do
        relay_port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/logs/relay.out")
        [[ -n $relay_port ]] && break
        sleep 0.1
    done
    [[ -n $relay_port ]] || { cat "$WORK/logs/relay.err" >&2; die "the delay relay did not come up"; }
    for how in delayed direct; do
        log "far: ebs:$snap mounted $how (${FAR_DELAY_MS} ms per request when delayed), read whole and cold"
        LM_LIB=$WORK/far-library-$how
        "$LIVEMOUNT" --library "$LM_LIB" library init > /dev/null
        mkdir -p "$WORK/far-state-$how" "$WORK/far-fs-$how"
        local serve=(--state-dir "$WORK/far-state-$how" --fuse-root "$WORK/far-fs-$how"
            --portal "127.0.0.1:$(free_port)" --http "127.0.0.1:$(free_port)" --advertise 10.0.2.2
            --guest-packages "$PACKAGES")
        if [[ $how == delayed ]]; then
            AWS_ENDPOINT_URL=http://127.0.0.1:$relay_port serve_daemon "${serve[@]}"
        else
            serve_daemon "${serve[@]}"
        fi
        lm cloud account add member --role-arn "arn:aws:iam::$MEMBER:role/livemount-access" > /dev/null
        lm --json mount "ebs:$snap" --account member > "$WORK/far-mount-$how.json" \
            || { tail -20 "$WORK/logs/daemon.log" >&2; die "mount ebs:$snap failed"; }
        local id fuse
        id=$(json_get "$WORK/far-mount-$how.json" id)
        fuse=$(json_get "$WORK/far-mount-$how.json" disks 0 fuse_path)
        drop_caches
        fio --name="far-$how" --filename="$fuse" --rw=read --bs=1M --direct=1 --ioengine=libaio --iodepth=16 \
            --output-format=json > "$WORK/far-fio-$how.json" 2> "$WORK/logs/far-fio-$how.err" \
            || { cat "$WORK/logs/far-fio-$how.err" >&2; die "fio through the mounted snapshot failed"; }
        mount_counters "$id" | sed "s/^/far.$how./" >> "$WORK/figures"
        cmp "$fuse" "$disk" || die "the mounted snapshot ($how) reads differently from the disk it was made of"
        lm unmount "$id" > /dev/null
        if [[ -f $GUEST ]]; then
            t0=$(now)
            lm --json mount "ebs:$snap" --account member --boot --mac 52:54:00:4c:4d:31 > "$WORK/far-boot-$how.json" \
                2> "$WORK/logs/far-boot-$how.err" \
                || { cat "$WORK/logs/far-boot-$how.err" >&2; tail -20 "$WORK/logs/daemon.log" >&2; die "mount --boot failed"; }
            rec "far.$how.boot_mount_s" "$(since "$t0")"
            id=$(json_get "$WORK/far-boot-$how.json" id)
            url=$(json_get "$WORK/far-boot-$how.json" boot script_url)
            mount_counters "$id" first-disk | sed "s/^/far.$how.after_mount./" >> "$WORK/figures"
            drop_caches
            python3 "$REPORT_PY" boot-run "far-$how" "$BOOT_TIMEOUT" "$WORK/logs/console-far-$how.log" "$WORK/qemu.pid" \
                -- qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot \
                -netdev "user,id=n0,bootfile=$url" -device "virtio-net-pci,netdev=n0,mac=52:54:00:4c:4d:31" -boot n \
                > "$WORK/boot-far-$how.json" 2> "$WORK/logs/boot-far-$how.err" &
            BOOT_PID=$!
            wait "$BOOT_PID" || true
            BOOT_PID=""
            [[ $(python3 "$REPORT_PY" boot-verdict "$WORK/boot-far-$how.json") == yes ]] || {
                tail -c 2000 "$WORK/logs/console-far-$how.log" | tr -d '\033' | tail -15 | sed 's/^/     | /' >&2
                die "the guest on the $how snapshot mount did not boot to its marker"
            }
            rec "far.$how.boot_marker_s" "$(json_get "$WORK/boot-far-$how.json" marker_s)"
            mount_counters "$id" first-disk | sed "s/^/far.$how.after_boot./" >> "$WORK/figures"
            lm unmount "$id" > /dev/null
        fi
        stop_daemon
        python3 - "$WORK/far-fio-$how.json" "$how" >> "$WORK/figures" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["jobs"][0]["read"]
print(f"far.{sys.argv[2]}.fio_s={r['runtime'] / 1000}")
print(f"far.{sys.argv[2]}.fio_bytes={r['io_bytes']}")
PY
        echo "   $how: $(grep "^far.$how.fio_s=" "$WORK/figures" | cut -d= -f2) s for the disk," \
             "$(( $(grep "^far.$how.bytes_recalled=" "$WORK/figures" | cut -d= -f2) >> 20 )) MiB recalled" >&2
    done
    stop_pid "$RELAY_PID" TERM 10
    RELAY_PID=""
}

report() {
    WORK="$WORK" RESULTS="$RESULTS" NPROC="$(nproc)" LOAD="$(load_span)" CACHE_DROPS="$CACHE_DROPS" \
    VERSIONS="livemount $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'); coldsnap 0.12.0 (release); moto 5.2.1; $(qemu-system-x86_64 --version | head -1)" \
    python3 "$REPORT_PY" summary-cloud
}

main() {
    ensure_tools
    # The guest is what the boot part boots; the backup part takes it when it is there.
    [[ " $PARTS " == *" boot "* || " $PARTS " == *" far "* ]] && prepare_guest
    build_livemount
    mkdir -p "$CACHE"
    WORK=$(mktemp -d "$CACHE/cloud-run.XXXXXX")
    mkdir -p "$WORK/logs"
    : > "$WORK/figures"
    : > "$WORK/boots.jsonl"
    load_prologue
    start_standin
    if [[ " $PARTS " == *" upload "* || " $PARTS " == *" boot "* ]]; then
        LM_LIB=$WORK/library
        "$LIVEMOUNT" --library "$LM_LIB" library init > /dev/null
        [[ " $PARTS " == *" boot "* ]] && "$LIVEMOUNT" --library "$LM_LIB" backup create --name guest "$GUEST" > /dev/null
        port_free "$LM_PORT" || die "port $LM_PORT is in use (set BENCH_LM_PORT)"
        port_free "$LM_HTTP" || die "port $LM_HTTP is in use (set BENCH_LM_HTTP)"
        mkdir -p "$WORK/state" "$WORK/fs"
        serve_daemon --state-dir "$WORK/state" --fuse-root "$WORK/fs" --portal "127.0.0.1:$LM_PORT" \
            --http "127.0.0.1:$LM_HTTP" --advertise "$APPLIANCE" --guest-packages "$PACKAGES"
        lm cloud account add member --role-arn "arn:aws:iam::$MEMBER:role/livemount-access" > /dev/null
        [[ " $PARTS " == *" upload "* ]] && bench_upload
        [[ " $PARTS " == *" boot "* ]] && bench_boot
        stop_daemon
    fi
    [[ " $PARTS " == *" backup "* ]] && bench_backup
    [[ " $PARTS " == *" restore "* ]] && bench_restore
    [[ " $PARTS " == *" snapshot "* ]] && bench_snapshot
    [[ " $PARTS " == *" far "* ]] && bench_far
    report
}

main "$@"
