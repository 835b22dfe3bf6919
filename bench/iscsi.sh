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
#     random reads, >= 1.2x its throughput for 1 MiB sequential reads;
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

log() { printf '\n== %s\n' "$*" >&2; }
lm() { "$LIVEMOUNT" --library "$WORK/lib" --api "$WORK/api.sock" "$@"; }
json_get() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2:]: d = d[int(k)] if k.isdigit() else d[k]
print(d)' "$@"; }

# ---------------------------------------------------------------------------------------------------------
# Clean-up: whatever was started, in reverse order of dependence. Never fails.
# ---------------------------------------------------------------------------------------------------------

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
    local i
    port_free "$LM_PORT" || die "port $LM_PORT is in use (set BENCH_LM_PORT)"
    mkdir -p "$WORK/state" "$WORK/fs"
    rm -f "$WORK/api.sock"
    "$LIVEMOUNT" --library "$WORK/lib" --api "$WORK/api.sock" serve --state-dir "$WORK/state" \
        --fuse-root "$WORK/fs" --portal "127.0.0.1:$LM_PORT" --http 127.0.0.1:0 < /dev/null >> "$WORK/logs/daemon.log" 2>&1 &
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

drop_mount() {  # drop_mount ID: unmount it (the next case gets a fresh one)
    local id=$1 keep=() m
    timeout 120 "$LIVEMOUNT" --library "$WORK/lib" --api "$WORK/api.sock" unmount "$id" > /dev/null 2>&1 \
        || echo "bench: unmount $id failed" >&2
    for m in "${LM_MOUNTS[@]}"; do [[ $m == "$id" ]] || keep+=("$m"); done
    LM_MOUNTS=("${keep[@]}")
}

# Counters of mount $1 as KEY=VALUE lines, summed over its disks.
mount_counters() {
    lm --json mounts | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m["id"] == sys.argv[1]:
        tot = {}
        for d in m["disks"]:
            for k, v in d["counters"].items():
                tot[k] = tot.get(k, 0) + v
        for k, v in tot.items():
            print(f"{k}={v}")
        break
else:
    sys.exit("mount " + sys.argv[1] + " is not listed")' "$1"
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
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$WORK/restored.img"
    tgtadm -C "$TGT_CONTROL" --lld iscsi --op bind --mode target --tid 1 -I ALL
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
    python3 - "$out" "$target" "$case" "$rc" "$(echo "$cpu1 - $cpu0" | bc -l)" "$spec" >> "$WORK/perf.jsonl" <<'PY'
import json, re, sys
out, target, case, rc, cpu, spec = sys.argv[1:]
text = open(out, errors="replace").read().replace("\r", "\n")
args = spec.split()
blocks = int(args[args.index("-b") + 1])
m = re.findall(r"^iops average (\d+) \(", text, re.M)
r = {"target": target, "case": case, "args": spec, "rc": int(rc), "target_cpu_s": round(float(cpu), 2)}
if int(rc) == 0 and m and "finished." in text:
    iops = int(m[-1])
    r.update(iops=iops, mib_s=round(iops * blocks * 512 / 2**20, 1))
else:
    errs = [l for l in text.splitlines() if "fail" in l.lower() or "error" in l.lower()]
    r["error"] = (errs[0] if errs else f"exit status {rc}" + (" (timeout)" if rc in ("124", "137") else ""))[:200]
print(json.dumps(r))
v = f"{r['iops']:>8} IOPS {r['mib_s']:>8.1f} MiB/s" if "iops" in r else "ERROR " + r["error"]
print(f"   {target:<15} {case:<11} {v}   (target CPU {r['target_cpu_s']:.1f} s)", file=sys.stderr)
PY
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
    python3 - "$WORK/figures" <<'PY' || die "the warm-up did not recall every chunk"
import sys
f = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[1]) if "=" in l)
p = "livemount-warm.after_warmup."
sys.exit(0 if int(f[p + "recalled_chunks"]) == int(f[p + "chunks_total"]) else 1)
PY
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
    python3 "$WORK/cu_parse.py" summary "$dir" >&2
}

bench_conformance() {
    write_cu_parser
    log "conformance: iscsi-test-cu --dataloss, one family at a time (timeout ${CU_TIMEOUT}s each)"
    new_mount conformance
    echo "   livemount: $MOUNT_URL" >&2
    conformance livemount "$MOUNT_URL" "$DAEMON_PID"
    echo "   tgt: $TGT_URL" >&2
    conformance tgt "$TGT_URL" "$TGTD_PID"
}

write_cu_parser() {
    # cu_parse.py summary DIR | json DIR: per test of DIR/ALL.*.out: pass, fail, skip or notrun. CUnit prints
    # "  Test: NAME ..." then the test's messages then "passed" or "FAILED"; libiscsi's skips are passes after
    # a "[SKIPPED]" message. Tests of a family that timed out or crashed are "notrun" (from --list).
    cat > "$WORK/cu_parse.py" <<'PY'
import json, os, re, subprocess, sys

def parse(text):
    res, suite, cur, buf = {}, None, None, []
    def close():
        if cur is None:
            return
        t = "\n".join(buf)
        v = list(re.finditer(r"(?:^|\.\.\.)\s*(passed|FAILED)\b", t, re.M))
        if not v:
            res[cur] = ("notrun", "no verdict (interrupted)")
        elif any(m.group(1) == "FAILED" for m in v):
            msg = re.search(r"\[FAILED\][^\n]*", t) or re.search(r"^\s+1\. [^\n]*", t, re.M)
            res[cur] = ("fail", re.sub(r"\s+\[SKIPPED\].*", "", msg.group(0)).strip()[:240] if msg else "")
        elif "[SKIPPED]" in t[: v[-1].start()]:
            msg = re.search(r"\[SKIPPED\][^\n]*", t)
            res[cur] = ("skip", msg.group(0).strip()[:240])
        else:
            res[cur] = ("pass", "")
    for line in text.splitlines():
        m = re.match(r"^Suite: (\S+)", line)
        if m:
            close(); cur, buf, suite = None, [], m.group(1); continue
        m = re.match(r"^  Test: (\S+) \.\.\.(.*)$", line)
        if m:
            close(); cur, buf = f"{suite}.{m.group(1)}", ["..." + m.group(2)]; continue
        if line.startswith("Run Summary"):
            close(); cur, buf = None, []; continue
        if cur:
            buf.append(line)
    close()
    return res

def collect(d):
    listing = subprocess.run(["iscsi-test-cu", "--list"], capture_output=True, text=True).stdout.split()
    tests = [t for t in listing if re.match(r"^ALL\.[A-Za-z0-9]+\.[A-Za-z0-9_]+$", t)]
    rcs = dict(l.split() for l in open(os.path.join(d, "rc")))
    per_test, families = {}, {}
    for fam, rc in rcs.items():
        if fam == "single-process":
            continue
        text = open(os.path.join(d, fam + ".out"), errors="replace").read()
        got = parse(text)
        families[fam] = {"rc": int(rc), "timeout": rc in ("124", "137")}
        for name, st in got.items():
            per_test["ALL." + name] = st
    for t in tests:
        if t not in per_test:
            fam = ".".join(t.split(".")[:2])
            why = "family timed out" if families.get(fam, {}).get("timeout") else \
                  ("family not run" if fam not in families else "no result in the family's output")
            per_test[t] = ("notrun", why)
    out = {"tests": {t: {"result": s, "detail": m} for t, (s, m) in sorted(per_test.items())},
           "families": families}
    for k in ("pass", "fail", "skip", "notrun"):
        out[k] = sum(1 for s, _ in per_test.values() if s == k)
    out["total"] = len(per_test)
    sp = os.path.join(d, "single-process.out")
    if os.path.exists(sp):
        got = parse(open(sp, errors="replace").read())
        out["single_process"] = {k: sum(1 for s, _ in got.values() if s == k) for k in ("pass", "fail", "skip", "notrun")}
        out["single_process"]["total"] = len(got)
        out["single_process"]["rc"] = int(rcs.get("single-process", -1))
        out["single_process"]["failed"] = sorted(n for n, (s, _) in got.items() if s == "fail")
    return out

mode, d = sys.argv[1], sys.argv[2]
r = collect(d)
if mode == "json":
    print(json.dumps(r))
else:
    print(f"   {os.path.basename(d)}: {r['pass']} passed, {r['fail']} failed, {r['skip']} skipped, "
          f"{r['notrun']} not run, of {r['total']}"
          + (f"; single process: {r['single_process']['pass']}/{r['single_process']['fail']}/"
             f"{r['single_process']['skip']} passed/failed/skipped" if "single_process" in r else ""))
PY
}

# ---------------------------------------------------------------------------------------------------------
# Report: JSON under the cache folder and the table.
# ---------------------------------------------------------------------------------------------------------
report() {
    if [[ -d $WORK/cu/livemount ]]; then python3 "$WORK/cu_parse.py" json "$WORK/cu/livemount" > "$WORK/cu-livemount.json"; fi
    if [[ -d $WORK/cu/tgt ]]; then python3 "$WORK/cu_parse.py" json "$WORK/cu/tgt" > "$WORK/cu-tgt.json"; fi
    # The daemon's warnings and errors, without colours, counted by message (ITTs and times stripped).
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/logs/daemon.log" | grep -n -E ' (WARN|ERROR) ' > "$WORK/daemon-problems.txt" || true
    grep -v -E 'iser_ib_init|oom_score_adj|nr_open|work_timer_start|bs_init|device_mgmt|bs_thread_open' \
        "$WORK/logs/tgtd.log" > "$WORK/tgtd-problems.txt" 2>/dev/null || true
    WORK=$WORK RESULTS=$RESULTS FULL=$FULL T=$T LOAD_START=$LOAD_START CACHE_DROPS=$CACHE_DROPS \
    LM_PORT=$LM_PORT TGT_PORT=$TGT_PORT LIVEMOUNT=$LIVEMOUNT python3 - <<'PY'
import json, os, re, subprocess, collections
env = os.environ
W = env["WORK"]
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
fig = {}
for l in open(os.path.join(W, "figures")):
    if "=" in l:
        k, v = l.rstrip("\n").split("=", 1)
        fig[k] = v
perf = [json.loads(l) for l in open(os.path.join(W, "perf.jsonl"))] if os.path.exists(os.path.join(W, "perf.jsonl")) else []
P = {(r["target"], r["case"]): r for r in perf}
cu = {t: json.load(open(os.path.join(W, f"cu-{t}.json"))) for t in ("livemount", "tgt")
      if os.path.exists(os.path.join(W, f"cu-{t}.json"))}

def norm(line):
    line = re.sub(r"^\S+Z\s+", "", line)
    return re.sub(r"\b(itt|cmdsn|ttt|lba|offset|len|expected|got)=\S+", r"\1=N", line).strip()
phases = []
if os.path.exists(os.path.join(W, "daemon-log-phases")):
    for l in open(os.path.join(W, "daemon-log-phases")):
        t, fam, a, b = l.split()
        phases.append((int(a), int(b), f"conformance {fam}"))
def phase(n):
    for a, b, name in phases:
        if a < n <= b:
            return name
    return "outside the conformance runs"
problems, where = [], []
for l in open(os.path.join(W, "daemon-problems.txt")):
    n, _, text = l.rstrip("\n").partition(":")
    problems.append(text)
    where.append(phase(int(n)))
grouped = collections.Counter(f"{norm(l)}   [during {w}]" for l, w in zip(problems, where))
tgt_problems = [l.rstrip("\n") for l in open(os.path.join(W, "tgtd-problems.txt"))] \
    if os.path.exists(os.path.join(W, "tgtd-problems.txt")) else []
deaths = open(os.path.join(W, "target-deaths")).read().split("\n")[:-1] \
    if os.path.exists(os.path.join(W, "target-deaths")) else []

cases = ["rand4k-m16", "rand4k-m64", "seq1m-m16", "seq1m-m64"]
targets = ["livemount-warm", "tgt-warm", "livemount-cold", "tgt-cold"]
def val(t, c, k):
    r = P.get((t, c))
    return r.get(k) if r else None
ratios = {}
for a, b in (("livemount-warm", "tgt-warm"), ("livemount-cold", "tgt-cold")):
    for c in cases:
        x, y = val(a, c, "iops"), val(b, c, "iops")
        ratios[f"{a}/{b}:{c}"] = round(x / y, 2) if x and y else None
goals = []
for c in cases:
    want = 1.5 if c.startswith("rand") else 1.2
    r = ratios.get(f"livemount-warm/tgt-warm:{c}")
    goals.append({"case": c, "metric": "IOPS" if c.startswith("rand") else "throughput", "goal": want,
                  "ratio": r, "met": r is not None and r >= want})

res = {
    "date": sh("date -Is"),
    "cores": os.cpu_count(),
    "load_average_start": float(env["LOAD_START"] or 0),
    "load_average_end": float(open("/proc/loadavg").read().split()[0]),
    "cold_cache": env["CACHE_DROPS"] == "yes",
    "versions": {"livemount": sh(f"{env['LIVEMOUNT']} --version"), "git": sh("git -C " + os.path.dirname(env["LIVEMOUNT"]) + "/../.. rev-parse --short HEAD"),
                 "tgt": sh("dpkg-query -W -f '${Version}' tgt"), "libiscsi-bin": sh("dpkg-query -W -f '${Version}' libiscsi-bin"),
                 "kernel": sh("uname -r")},
    "disk": {k[5:]: v for k, v in fig.items() if k.startswith("disk.")},
    "seconds_per_case": int(env["T"]),
    "portals": {"livemount": "127.0.0.1:" + env["LM_PORT"], "tgt": "127.0.0.1:" + env["TGT_PORT"]},
    "perf": perf,
    "ratios_iops": ratios,
    "goals": goals,
    "figures": {k: v for k, v in fig.items() if not k.startswith("disk.")},
    "conformance": cu,
    "target_deaths": deaths,
    "daemon_log_problems": {"count": len(problems), "by_message": grouped.most_common(), "first": problems[:20]},
    "tgtd_log_lines": len(tgt_problems),
    "tgtd_log": tgt_problems[:50],
}
json.dump(res, open(env["RESULTS"], "w"), indent=2)

print()
print("=" * 100)
print(f"iSCSI benchmark: {res['disk'].get('size', '?')} byte disk (full.img), iscsi-perf {res['seconds_per_case']} s per case, "
      f"{res['cores']} cores, load average {res['load_average_start']:.2f} at the start, {res['load_average_end']:.2f} at the end"
      + ("" if res["cold_cache"] else "  [page cache NOT dropped: cold figures are warm]"))
print()
hdr = f"{'case':<12}" + "".join(f"{t:>24}" for t in targets)
print(hdr)
print(f"{'':<12}" + "".join(f"{'IOPS    MiB/s  cpu s':>24}" for _ in targets))
for c in cases:
    row = f"{c:<12}"
    for t in targets:
        r = P.get((t, c))
        if not r:
            row += f"{'-':>24}"
        elif "iops" in r:
            row += f"{r['iops']:>10} {r['mib_s']:>8.1f} {r['target_cpu_s']:>4.1f}"
        else:
            row += f"{'ERROR':>24}"
    print(row)
errs = [r for r in perf if "error" in r]
for r in errs:
    print(f"  error: {r['target']} {r['case']}: {r['error']}")
print()
print("ratios (livemount / tgt, IOPS; for 1 MiB reads the throughput ratio is the same number):")
for c in cases:
    w, k = ratios.get(f"livemount-warm/tgt-warm:{c}"), ratios.get(f"livemount-cold/tgt-cold:{c}")
    print(f"  {c:<12} warm {('%.2fx' % w) if w else '-':>7}   cold {('%.2fx' % k) if k else '-':>7}")
for g in goals:
    print(f"  goal {g['case']:<12} livemount-warm >= {g['goal']}x tgt-warm {g['metric']:<10}: "
          f"{('%.2fx' % g['ratio']) if g['ratio'] else '-':>7}  {'MET' if g['met'] else 'NOT MET'}")
f = res["figures"]
if "livemount-warm.warmup_s" in f:
    print(f"  (warm-up: dd of the mount's FUSE file {float(f['livemount-warm.warmup_s']):.1f} s, "
          f"{f.get('livemount-warm.after_warmup.recalled_chunks')}/{f.get('livemount-warm.after_warmup.chunks_total')} chunks recalled; "
          f"tgt: cat of the restored file {float(f.get('tgt-warm.warmup_s', 0)):.1f} s)")
cold = [(c, f.get(f"livemount-cold.{c}.recalled_chunks"), f.get(f"livemount-cold.{c}.chunks_total")) for c in cases]
if any(x[1] for x in cold):
    print("  (chunks recalled during each cold case: " + ", ".join(f"{c} {r}/{t}" for c, r, t in cold if r) + ")")
for t in ("livemount-warm", "tgt-warm"):
    if f"{t}.data_check" in f:
        print(f"  data check {t}: qemu-img compare with full.img: {f[t + '.data_check']}")

if cu:
    print()
    print("conformance: iscsi-test-cu --dataloss, one process per family (ALL.<Family>)")
    print(f"  {'':<10}{'passed':>8}{'failed':>8}{'skipped':>9}{'not run':>9}{'total':>7}   single-process -t ALL (pass/fail/skip)")
    for t, r in cu.items():
        sp = r.get("single_process")
        print(f"  {t:<10}{r['pass']:>8}{r['fail']:>8}{r['skip']:>9}{r['notrun']:>9}{r['total']:>7}   "
              + (f"{sp['pass']}/{sp['fail']}/{sp['skip']}" if sp else "-"))
    names = sorted(set().union(*[r["tests"].keys() for r in cu.values()]))
    diff = [n for n in names if len({cu[t]["tests"].get(n, {}).get("result") for t in cu}) > 1]
    for t, r in cu.items():
        fails = [n for n, x in r["tests"].items() if x["result"] == "fail"]
        print(f"  failed on {t} ({len(fails)}):")
        for n in fails:
            print(f"    {n:<48} {r['tests'][n]['detail'][:110]}")
        nr = [n for n, x in r["tests"].items() if x["result"] == "notrun"]
        if nr:
            print(f"  not run on {t} ({len(nr)}): " + ", ".join(nr[:20]) + (" ..." if len(nr) > 20 else ""))
        to = [fam for fam, x in r["families"].items() if x["timeout"]]
        if to:
            print(f"  families that timed out on {t}: " + ", ".join(to))
    if len(cu) == 2:
        print(f"  results that differ between the targets ({len(diff)}), by livemount / tgt result:")
        groups = collections.defaultdict(list)
        for n in diff:
            groups[(cu["livemount"]["tests"].get(n, {}).get("result", "-"), cu["tgt"]["tests"].get(n, {}).get("result", "-"))].append(n[4:])
        for (a, b), ns in sorted(groups.items()):
            suites = collections.Counter(n.split(".")[0] for n in ns)
            full = {n.split(".")[0] for n in ns if sum(1 for t in names if t.startswith("ALL." + n.split(".")[0] + ".")) == suites[n.split(".")[0]]}
            parts = [f"{s_}.* ({c})" if s_ in full else ", ".join(n for n in ns if n.startswith(s_ + ".")) for s_, c in suites.items()]
            print(f"    {a} / {b} ({len(ns)}): " + "; ".join(parts))
    for t, r in cu.items():
        why = collections.Counter(re.sub(r"^\[SKIPPED\]\s*", "", x["detail"]) for x in r["tests"].values() if x["result"] == "skip")
        print(f"  why tests were skipped on {t}: " + "; ".join(f"{n} x {m}" for m, n in why.most_common(6))
              + (" ..." if len(why) > 6 else ""))
    for t, r in cu.items():
        sp = r.get("single_process")
        if sp and sp["failed"]:
            extra = sorted(set(sp["failed"]) - {n[4:] for n, x in r["tests"].items() if x["result"] == "fail"})
            if extra:
                print(f"  {t}: failing only in the single-process run ({len(extra)}): " + ", ".join(extra))
if deaths:
    print()
    for d in deaths:
        print("TARGET DIED: " + d)
print()
if problems:
    print(f"the livemount daemon logged {len(problems)} warnings/errors:")
    for m, n in grouped.most_common(10):
        print(f"  {n:>5} x {m[:170]}")
else:
    print("the livemount daemon logged no warnings or errors")
print()
print(f"results written to {env['RESULTS']}")
PY
}

main() {
    ensure_tools
    need_corpus
    build_livemount
    WORK=$(mktemp -d "$CACHE/iscsi-run.XXXXXX")
    mkdir -p "$WORK/logs" "$WORK/perf" "$WORK/cu"
    : > "$WORK/figures"
    LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
    if (( $(echo "$LOAD_START > 0.7" | bc -l) )); then
        echo "bench: WARNING: load average $LOAD_START before the run: other work will skew the timings" >&2
    fi
    prepare_disk
    start_daemon
    start_tgtd
    if [[ ${BENCH_SKIP_PERF:-0} != 1 ]]; then
        bench_livemount
        bench_tgt
    fi
    [[ ${BENCH_SKIP_CU:-0} == 1 ]] || bench_conformance
    report
}

main "$@"
