#!/usr/bin/env python3
"""The Python side of the bench/*.sh scripts: one subcommand per job they hand over (reading a JSON field,
drawing and timing reads, running a QEMU boot, parsing test output, and the final reports that write the
results JSON under the cache folder and print the tables).

Usage: python3 bench/report.py SUBCOMMAND ARGS...   (`--help` lists them). The summary-* subcommands take
their inputs from the environment (WORK, RESULTS, ...), as the scripts set it; the others take positional
arguments. Output formats are what the scripts print and what people read: change them only on purpose.

Each cmd_* function receives argv as a script would see sys.argv: argv[0] is the subcommand's name, then
its positional arguments in the order of its usage line.

Why one file of over 1,000 lines: it holds the Python of four scripts, which until now lived as heredocs
inside them; the subcommands share nothing but argument handling, and one file keeps them together for the
scripts to call (python3 "$REPORT_PY" SUBCOMMAND, see bench/lib.sh). The sections follow the scripts.
"""
import argparse
import base64
import bisect
import collections
import errno
import functools
import hashlib
import json
import mmap
import os
import random
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time


# ---------------------------------------------------------------------------------------------------------
# Small helpers of all the scripts.
# ---------------------------------------------------------------------------------------------------------

def run_facts(env):
    """What every results file records of the run itself: when, on how many cores, with which peers, whether
    the page cache could be dropped, and the load average over the run."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": int(env["NPROC"]),
        "versions": env["VERSIONS"],
        "cold_cache": env["CACHE_DROPS"] == "yes",
        "load_average": env["LOAD"],
    }

def cmd_json_get(argv):
    """json-get FILE KEY...: prints one field of a JSON file (`-`: standard input); KEY is a name, a list index (digits) or a
    dotted path of both (disks.0.fuse_path)."""
    d = json.load(sys.stdin if argv[1] == "-" else open(argv[1]))
    for k in [p for key in argv[2:] for p in key.split(".")]:
        d = d[int(k)] if k.isdigit() else d[k]
    print(d)


def cmd_mount_counters(argv):
    """mount-counters ID [first-disk]: the counters of mount ID from `livemount --json mounts` on stdin, as
    KEY=VALUE lines: summed over its disks, or of its first disk only with `first-disk`."""
    mid = argv[1]
    first_only = len(argv) > 2 and argv[2] == "first-disk"
    for m in json.load(sys.stdin):
        if m["id"] == mid:
            tot = {}
            for d in m["disks"][:1] if first_only else m["disks"]:
                for k, v in d["counters"].items():
                    tot[k] = tot.get(k, 0) + v
            for k, v in tot.items():
                print(f"{k}={v}")
            break
    else:
        sys.exit("mount " + mid + " is not listed")


def cmd_free_port(argv):
    """free-port: a TCP port of 127.0.0.1 nobody listens on (the kernel's pick)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])


def cmd_partition_of(argv):
    """partition-of: start and size in bytes of the first partition, from `sfdisk -J` on stdin."""
    t = json.load(sys.stdin)["partitiontable"]
    sector = t.get("sectorsize", 512)
    p = t["partitions"][0]
    print(p["start"] * sector, p["size"] * sector)


def cmd_browse_root(argv):
    """browse-root BROWSE_JSON FILE: the path of the browsed file system that holds FILE (relative to its
    root); nothing when none does."""
    b = json.load(open(argv[1]))["browse"]
    for fs in b["filesystems"]:
        if os.path.isfile(os.path.join(fs["path"], argv[2])):
            print(fs["path"])
            break


# ---------------------------------------------------------------------------------------------------------
# bench/boot.sh
# ---------------------------------------------------------------------------------------------------------
def cmd_data_bytes(argv):
    """data-bytes FILE: bytes in the data extents of FILE (SEEK_DATA / SEEK_HOLE): what is allocated, not
    its apparent size (boot.sh)."""
    fd = os.open(argv[1], os.O_RDONLY)
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


def cmd_library_figures(argv):
    """library-figures SHOW_JSON TAG: TAG.chunk_size, .chunk_count, .zero_chunks and .allocated (non-zero
    chunks * chunk size) of disk 0 of `backup show`, as figures lines (boot.sh)."""
    m = json.load(open(argv[1]))
    d = m["disks"][0]
    t = argv[2]
    print(f"{t}.chunk_size={d['chunk_size']}")
    print(f"{t}.chunk_count={d['chunk_count']}")
    print(f"{t}.zero_chunks={d['zero_chunks']}")
    print(f"{t}.allocated={(d['chunk_count'] - d['zero_chunks']) * d['chunk_size']}")


def cmd_boot_run(argv):
    """boot-run NAME TIMEOUT CONSOLE_LOG PID_FILE -- QEMU ARGS...: runs QEMU, stamps milestones of its serial
    console (seconds since QEMU's start), prints one JSON line (boot.sh)."""
    name, timeout, console_log, pid_file = argv[1], float(argv[2]), argv[3], argv[4]
    cmd = argv[argv.index("--") + 1:]
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


def cmd_boot_verdict(argv):
    """boot-verdict BOOT_JSON: one line about the boot on stderr; prints yes if it booted with root on the
    iSCSI disk, else no (boot.sh)."""
    r = json.load(open(argv[1]))
    f = lambda k: "-" if r.get(k) is None else f"{r[k]:.1f}s"
    verdict = "ok" if r["ok"] else "FAILED (no marker with tran=iscsi)"
    print(f"   {r['name']:<16} kernel {f('kernel_s')}  iscsistart {f('iscsistart_s')}  marker {f('marker_s')}  "
          f"exit {f('exit_s')}  {verdict}", file=sys.stderr)
    print("yes" if r["ok"] else "no")


def cmd_boot_recall(argv):
    """boot-recall FIGURES RUN: what RUN recalled after mount --boot and after the boot, against its
    library's allocated data, on stdout (boot.sh)."""
    f = dict(l.rstrip("\n").split("=", 1) for l in open(argv[1]) if "=" in l)
    r = argv[2]
    tag = r.split(".")[0]
    alloc = int(f[tag + ".allocated"])
    for when in ("prep", "boot"):
        b = int(f[f"{r}.{when}.bytes_recalled"])
        print(f"   recalled after {'mount --boot' if when == 'prep' else 'the boot  '}: {b / 2**20:7.1f} MiB "
              f"({100 * b / alloc:5.1f}% of {alloc / 2**20:.0f} MiB allocated), chunks "
              f"{f[f'{r}.{when}.recalled_chunks']}/{f[f'{r}.{when}.chunks_total']}")


def cmd_summary_boot(argv):
    """summary-boot: boot-results.json and the table of bench/boot.sh (inputs in the environment)."""
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
        **run_facts(env),
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
    # The first boot mount of the backup prepares the guest (and keeps it as a version of the backup);
    # every later one (the lm-* boots) mounts that version and prepares nothing.
    if "copy.prep_s" in figs:
        v = float(figs["copy.prep_s"])
        goal("first mount --boot ready (prepared and kept), s", v, "< 15 s", v < 15, " s")
    if "copy.prep.bytes_recalled" in figs:
        v = 100 * float(figs["copy.prep.bytes_recalled"]) / alloc
        goal("recalled by the first mount --boot, % of allocated", v, "<= 10%", v <= 10, "%")
    for path in ("lm-net", "lm-disk"):
        if P.get(path, {}).get("prep_s") is not None:
            v = P[path]["prep_s"]
            goal(f"later mount --boot ready ({path}), s", v, "< 2 s", v < 2, " s")
            if P.get(path.replace("lm", "tgt"), {}).get("marker_s"):
                r = (P[path]["marker_s"] + v) / P[path.replace("lm", "tgt")]["marker_s"]
                goal(f"later mount --boot + boot to the marker / tgt's boot ({path})", r, "<= 1.2x", r <= 1.2)
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


# ---------------------------------------------------------------------------------------------------------
# bench/fuse.sh
# ---------------------------------------------------------------------------------------------------------
def cmd_fuse_offsets(argv):
    """fuse-offsets IMAGE N SEED OUT: N distinct 4 KiB-aligned offsets of non-zero 4 KiB blocks inside the
    image's data ranges (SEEK_DATA/SEEK_HOLE), in random order; OUT gets "offset digest" lines (fuse.sh)."""
    image, n, seed, out = argv[1], int(argv[2]), int(argv[3]), argv[4]
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


def cmd_fuse_reads(argv):
    """fuse-reads FILE OFFSETS OUT: one pass, one 4 KiB read per offset in the file's order, timed one by one
    (perf_counter_ns around the read call only), each checked against the raw image's digest. O_DIRECT with
    an aligned buffer if the file system takes it, else plain pread (fuse.sh)."""
    path, offsets, out = argv[1], argv[2], argv[3]
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


def cmd_distinct_blocks(argv):
    """distinct-blocks OFFSETS BLOCK N OUT: the first N lines of OFFSETS (fuse-offsets) whose offsets lie in
    BLOCK-sized blocks of their own, so that each read is the first of its block (cloud.sh)."""
    src, block, n, out = argv[1], int(argv[2]), int(argv[3]), argv[4]
    seen, kept = set(), []
    for line in open(src):
        off = int(line.split()[0])
        if off // block not in seen and len(kept) < n:
            seen.add(off // block)
            kept.append(line)
    if len(kept) < n:
        sys.exit(f"only {len(kept)} of {n} offsets lie in blocks of their own")
    open(out, "w").writelines(kept)


def cmd_ebs_round_trips(argv):
    """ebs-round-trips ENDPOINT CREDS_JSON SNAPSHOT OFFSETS OUT: one GetSnapshotBlock round trip per offset's
    512 KiB block, one at a time on one kept-alive connection, timed from sending the request to the last
    byte of the answer (perf_counter_ns): the floor of any cold read of a snapshot through this endpoint.
    Each answer is checked against its SHA-256 and the offset's 4 KiB against its digest. The request names
    the account by its access key, as the stand-in reads it; nothing but the call is timed (cloud.sh)."""
    import http.client
    import urllib.parse
    endpoint, creds, snap, offsets, out = argv[1], json.loads(argv[2]), argv[3], argv[4], argv[5]
    B, BLOCK = 4096, 512 << 10
    url = urllib.parse.urlparse(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    day = time.strftime("%Y%m%d", time.gmtime())
    headers = {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={creds['AWS_ACCESS_KEY_ID']}/{day}/us-east-1/ebs/"
                         "aws4_request, SignedHeaders=host, Signature=0",
        "X-Amz-Security-Token": creds.get("AWS_SESSION_TOKEN", ""),
    }

    def get(path):
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"GET {path}: {r.status} {body[:200]!r}")
        return r, body

    tokens, page = {}, None
    while True:
        q = "?maxResults=10000" + (f"&pageToken={urllib.parse.quote(page)}" if page else "")
        doc = json.loads(get(f"/snapshots/{snap}/blocks{q}")[1])
        tokens.update({b["BlockIndex"]: b["BlockToken"] for b in doc["Blocks"]})
        page = doc.get("NextToken")
        if not page:
            break
    items = [(int(a), b) for a, b in (line.split() for line in open(offsets))]
    lat, bad = [], []
    for off, digest in items:
        index = off // BLOCK
        path = f"/snapshots/{snap}/blocks/{index}?blockToken={urllib.parse.quote(tokens[index])}"
        t0 = time.perf_counter_ns()
        r, body = get(path)
        t1 = time.perf_counter_ns()
        lat.append(t1 - t0)
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        part = body[off % BLOCK:off % BLOCK + B]
        if sha != r.getheader("x-amz-Checksum") or hashlib.blake2b(part, digest_size=16).hexdigest() != digest:
            bad.append(off)
    json.dump({"how": "GetSnapshotBlock over HTTP", "lat_ns": lat, "mismatches": bad}, open(out, "w"))
    if bad:
        sys.exit(f"{len(bad)} blocks came back other than the disk holds (first at offset {bad[0]})")


def cmd_fuse_pass(argv):
    """fuse-pass READS_JSON LABEL: median, p90, p99 of one pass of fuse-reads, one line (fuse.sh)."""
    r = json.load(open(argv[1]))
    s = sorted(r["lat_ns"])
    p = lambda q: s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] / 1e6
    print(f"   {argv[2]:<22} median {p(50):8.3f} ms  p90 {p(90):8.3f} ms  p99 {p(99):8.3f} ms  "
          f"({r.get('how') or ('O_DIRECT' if r['direct'] else 'pread')}, {len(r['mismatches'])} mismatches)")


def cmd_summary_fuse(argv):
    """summary-fuse: fuse-results*.json and the table of bench/fuse.sh (inputs in the environment)."""
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
        **run_facts(env),
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
    tp = {}
    figs = {}
    if os.path.exists(os.path.join(work, "figures")):
        figs = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "figures")) if "=" in l)
    if figs.get("throughput.restore_s"):
        restore = int(figs["throughput.disk_size"]) / float(figs["throughput.restore_s"]) / MiB
        tp = {"restore_mib_s": restore, "cases": {}}
        for case in ("seq1m", "rand4k"):
            for p_ in ("cold", "again"):
                j = load(f"fio-{case}-{p_}.json")
                if j:
                    r = j["jobs"][0]["read"]
                    tp["cases"][f"{case}-{p_}"] = {"mib_s": r["bw_bytes"] / MiB, "iops": r["iops"],
                                                   "recalled_chunks": int(figs.get(f"throughput.{case}.recalled_chunks", 0))}
        c = tp["cases"].get("seq1m-cold")
        tp["goal_seq_cold_vs_restore"] = {"goal": 0.8, "ratio": c["mib_s"] / restore if c else None,
                                          "met": bool(c) and c["mib_s"] / restore >= 0.8}
    res["throughput"] = tp
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
    tp = res.get("throughput")
    if tp:
        print()
        print(f"cold throughput through the FUSE file (fio, O_DIRECT, 16 in flight) beside the library's restore "
              f"({tp['restore_mib_s']:.0f} MiB/s):")
        for k, c in tp["cases"].items():
            print(f"  {k:<14} {c['mib_s']:9.1f} MiB/s {c['iops']:10.0f} IOPS  ({c['mib_s'] / tp['restore_mib_s']:.2f}x the restore)")
        g = tp["goal_seq_cold_vs_restore"]
        print(f"  goal seq1m cold >= 0.8x the restore: {('%.2fx' % g['ratio']) if g['ratio'] else '-'}  "
              f"{'MET' if g['met'] else 'NOT MET'}")
    if res["daemon_log_problems"]:
        print()
        print(f"the livemount daemon logged {len(res['daemon_log_problems'])} warnings/errors, first ones:")
        for l in res["daemon_log_problems"][:5]:
            print("  " + l[:200])
    print()
    print(f"results written to {env['RESULTS']}")


# ---------------------------------------------------------------------------------------------------------
# bench/iscsi.sh
# ---------------------------------------------------------------------------------------------------------
def cmd_iscsi_perf(argv):
    """iscsi-perf OUT TARGET CASE RC CPU_S SPEC: the JSON line of one iscsi-perf run (its output in OUT) on
    stdout, one line about it on stderr (iscsi.sh)."""
    out, target, case, rc, cpu, spec = argv[1:]
    text = open(out, errors="replace").read().replace("\r", "\n")
    args = spec.split()
    blocks = int(args[args.index("-b") + 1])
    m = re.findall(r"^iops average (\d+) \(", text, re.M)
    r = {"target": target, "case": case, "args": spec, "rc": int(rc), "target_cpu_s": round(float(cpu), 2)}
    if int(rc) == 0 and m and "finished." in text:
        iops = int(m[-1])
        r.update(iops=iops, mib_s=round(iops * blocks * 512 / 2**20, 1))
        # A sequential run wraps to LBA 0 at the end of the disk: from then on a cold target reads what the
        # first pass brought in. The first pass's own rate: the disk's size over the time the pass took, the
        # second in which it wrapped counted at that second's rate.
        seconds = [(int(a), int(b)) for a, b in
                   re.findall(r"^\d\d:\d\d:\d\d - lba (\d+), iops current (\d+) ", text, re.M)]
        capacity = re.search(r"^capacity is (\d+) blocks", text, re.M)
        if "-r" not in args and seconds and capacity:
            total = int(capacity.group(1))
            wrap = next((i for i in range(len(seconds)) if seconds[i][0] < (seconds[i - 1][0] if i else 0)), None)
            if wrap is None:
                r.update(first_pass_complete=False, first_pass_mib_s=r["mib_s"])
            elif seconds[wrap][1] > 0:
                before = seconds[wrap - 1][0] if wrap else 0
                t = wrap + (total - before) / (seconds[wrap][1] * blocks)
                r.update(first_pass_complete=True, first_pass_s=round(t, 2),
                         first_pass_mib_s=round(total * 512 / t / 2**20, 1))
    else:
        errs = [l for l in text.splitlines() if "fail" in l.lower() or "error" in l.lower()]
        r["error"] = (errs[0] if errs else f"exit status {rc}" + (" (timeout)" if rc in ("124", "137") else ""))[:200]
    print(json.dumps(r))
    v = f"{r['iops']:>8} IOPS {r['mib_s']:>8.1f} MiB/s" if "iops" in r else "ERROR " + r["error"]
    print(f"   {target:<15} {case:<11} {v}   (target CPU {r['target_cpu_s']:.1f} s)", file=sys.stderr)


def cmd_warmup_complete(argv):
    """warmup-complete FIGURES: exits 0 when the warm-up recalled every chunk, else 1 (iscsi.sh)."""
    f = dict(l.rstrip("\n").split("=", 1) for l in open(argv[1]) if "=" in l)
    p = "livemount-warm.after_warmup."
    sys.exit(0 if int(f[p + "recalled_chunks"]) == int(f[p + "chunks_total"]) else 1)


def cmd_cu(argv):
    """cu summary DIR | cu json DIR: per test of DIR/ALL.*.out: pass, fail, skip or notrun. CUnit prints
    "  Test: NAME ..." then the test's messages then "passed" or "FAILED"; libiscsi's skips are passes after
    a "[SKIPPED]" message. Tests of a family that timed out or crashed are "notrun" (from --list) (iscsi.sh)."""
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

    mode, d = argv[1], argv[2]
    r = collect(d)
    if mode == "json":
        print(json.dumps(r))
    else:
        print(f"   {os.path.basename(d)}: {r['pass']} passed, {r['fail']} failed, {r['skip']} skipped, "
              f"{r['notrun']} not run, of {r['total']}"
              + (f"; single process: {r['single_process']['pass']}/{r['single_process']['fail']}/"
                 f"{r['single_process']['skip']} passed/failed/skipped" if "single_process" in r else ""))


def cmd_summary_iscsi(argv):
    """summary-iscsi: iscsi-results.json and the table of bench/iscsi.sh (inputs in the environment)."""
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
    # Cold reads against what the library itself does with the same backup: its restore throughput (the page
    # cache dropped before the restore, as before each cold case), and tgt reading the restored file cold.
    restore_mib_s = None
    if fig.get("disk.restore_s") and fig.get("disk.size"):
        restore_mib_s = int(fig["disk.size"]) / float(fig["disk.restore_s"]) / 2**20
    cold_goals = []
    # The first pass over the disk only (the run wraps around a disk it has read whole: that is warm).
    seq = val("livemount-cold", "seq1m-m16", "first_pass_mib_s")
    r = round(seq / restore_mib_s, 2) if seq and restore_mib_s else None
    cold_goals.append({"case": "seq1m-m16", "first_pass_mib_s": seq,
                       "against": f"library restore ({restore_mib_s or 0:.0f} MiB/s)",
                       "goal": 0.8, "ratio": r, "met": r is not None and r >= 0.8})
    r = ratios.get("livemount-cold/tgt-cold:rand4k-m16")
    cold_goals.append({"case": "rand4k-m16", "against": "tgt-cold IOPS", "goal": 1.0, "ratio": r,
                       "met": r is not None and r >= 1.0})

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
        "restore_mib_s": restore_mib_s,
        "cold_goals": cold_goals,
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
    for c in ("seq1m-m16", "seq1m-m64"):
        fp = [(t, P[(t, c)]) for t in targets if (t, c) in P and P[(t, c)].get("first_pass_mib_s")]
        if fp:
            print(f"  {c} first pass over the disk (before the run wraps to LBA 0), MiB/s: "
                  + ", ".join(f"{t} {x['first_pass_mib_s']:.0f}" + ("" if x.get("first_pass_complete") else " (no wrap)")
                              for t, x in fp))
    for g in cold_goals:
        print(f"  goal {g['case']:<12} livemount-cold >= {g['goal']}x {g['against']:<30}: "
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




def timed_threads(target, threads):
    """Runs `target` on `threads` threads at once; the seconds until the last has finished."""
    import threading
    workers = [threading.Thread(target=target) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0

def load_work_json(work, name):
    """A JSON file of a benchmark's work folder, or None when the run did not write it."""
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) else None


def read_figures(work):
    """The NAME=VALUE figures a benchmark script recorded (`rec` in bench/lib.sh)."""
    figs = {}
    for line in open(os.path.join(work, "figures")):
        k, v = line.strip().split("=", 1)
        figs[k] = float(v)
    return figs


def image_info(path):
    """A disk image's path, size and allocated bytes."""
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "allocated": st.st_blocks * 512}

# ---------------------------------------------------------------------------------------------------------
# bench/library.sh
# ---------------------------------------------------------------------------------------------------------
def cmd_summary_library(argv):
    """summary-library: results.json and the tables of bench/library.sh (inputs in the environment)."""
    env = os.environ
    work = env["WORK"]
    MiB = 1 << 20

    load = functools.partial(load_work_json, work)
    figs = read_figures(work)
    img = image_info

    res = {
        **run_facts(env),
        "images": {"full": img(env["FULL"]), "incr": img(env["INCR"])},
        "limits": {"full": load("limits-full.json"), "incr": load("limits-incr.json")},
        "tools": {},
        "livemount": {"full": load("livemount-full.json"), "incr": load("livemount-incr.json"),
                      "library_stats": load("livemount-stats.json")},
        "sweep": [],
    }
    for tool in ["livemount", "restic", "borg", "casync"]:
        t = {k.split(".", 1)[1]: v for k, v in figs.items() if k.startswith(tool + ".")}
        if t:
            res["tools"][tool] = t
    for cs in env["SWEEP_SIZES"].split():
        st, rd = load(f"sweep-{cs}-stats.json"), load(f"sweep-{cs}-read.json")
        if st and rd:
            res["sweep"].append({
                "chunk_size": cs, "data_bytes": st["data_bytes"], "stored_bytes": st["stored_bytes"],
                "du_bytes": int(figs[f"sweep.{cs}.du_bytes"]), "reduction_ratio": st["reduction_ratio"],
                "full_s": figs[f"sweep.{cs}.full_s"], "incr_s": figs[f"sweep.{cs}.incr_s"],
                "median_ms": rd["median_ms"], "p99_ms": rd["p99_ms"], "mean_ms": rd["mean_ms"],
                "reads": rd["reads"], "cold": rd["cold"]})

    size = res["images"]["incr"]["size"]
    print()
    print("=" * 100)
    print(f"livemount library benchmark  {res['date']}  ({res['cores']} cores; page cache "
          f"{'dropped before every timed step' if res['cold_cache'] else 'NOT dropped: WARM figures'})")
    print(f"versions: {res['versions']}")
    print(f"load average (1 min) at start -> end: {res['load_average']}  (figures need a quiet machine)")
    for k, v in res["images"].items():
        print(f"image {k:<5} {v['path']}: {v['size'] / MiB:,.0f} MiB, {v['allocated'] / MiB:,.0f} MiB allocated")
    lm = res["livemount"]
    if lm["full"]:
        s = lm["full"]["stats"]
        print(f"livemount full: read {s['bytes_read'] / MiB:,.0f} MiB, stored {s['new_bytes_stored'] / MiB:,.0f} MiB new "
              f"({s['chunks_new']} chunks new, {s['chunks_reused']} reused)")
        s = lm["incr"]["stats"]
        print(f"livemount incr: read {s['bytes_read'] / MiB:,.0f} MiB, stored {s['new_bytes_stored'] / MiB:,.0f} MiB new "
              f"({s['chunks_new']} chunks new, {s['chunks_reused']} reused)")

    print()
    hdr = f"{'tool':<10} {'full ingest':>18} {'incr ingest':>18} {'restore incr':>18} {'stored full':>13} {'stored full+incr':>17}"
    print(hdr)
    print("-" * len(hdr))
    def t(v):
        return f"{v:7.1f} s {size / MiB / v:5.0f} MiB/s" if v else "-"
    for name, f in res["tools"].items():
        print(f"{name:<10} {t(f.get('full_s')):>18} {t(f.get('incr_s')):>18} {t(f.get('restore_s')):>18} "
              f"{f.get('full_bytes', 0) / MiB:>9,.0f} MiB {f.get('incr_bytes', 0) / MiB:>13,.0f} MiB")
    print("(MiB/s over the image's full size; stored = du -sb of the repository folder; each tool at its defaults)")

    goals = []
    T = res["tools"]
    L = T.get("livemount")

    def ratio(label, value, goal, met):
        goals.append({"goal": label, "value": value, "target": goal, "met": met})
        print(f"  {label:<58} {value:6.2f}x   goal {goal:<7} {'MET' if met else 'NOT MET'}")

    lf, li = res["limits"]["full"], res["limits"]["incr"]
    floor = {k.split(".", 1)[1]: v for k, v in figs.items() if k.startswith("floor.")}
    res["restore_floor"] = floor
    if L and lf and li:
        print()
        print(f"this machine's limits, measured in this run ({res['cores']} cores):")
        for name, lim in (("full", lf), ("incr", li)):
            print(f"  {name:<4} image: {lim['allocated_bytes'] / MiB:,.0f} MiB allocated, read cold in {lim['read_s']:.2f} s "
                  f"({lim['read_mib_s']:,.0f} MiB/s); on all cores BLAKE3 {lim['hash_s']:.2f} s, BLAKE3 + zstd -"
                  f"{lim['zstd_level']} {lim['hash_codec_s']:.2f} s")
        if floor:
            print(f"  restore floor: packs read cold {floor['read_packs_s']:.2f} s + {floor['write_bytes'] / MiB:,.0f} MiB "
                  f"written with dd oflag=direct {floor['write_s']:.2f} s")
        print()
        print("ratios (limit time / livemount time; 1.0 = as fast as the machine allows):")
        ceiling = max(lf["read_s"], lf["hash_codec_s"])
        ratio(f"ingest, full image (ceiling {ceiling:.2f} s, took {L['full_s']:.2f} s)", ceiling / L["full_s"], ">= 0.8",
              ceiling / L["full_s"] >= 0.8)
        ceiling = max(li["read_s"], li["hash_s"])
        ratio(f"incremental (read + hash {ceiling:.2f} s, took {L['incr_s']:.2f} s)", ceiling / L["incr_s"], ">= 0.8",
              ceiling / L["incr_s"] >= 0.8)
        if floor:
            f = floor["read_packs_s"] + floor["write_s"]
            ratio(f"restore (floor {f:.2f} s, took {L['restore_s']:.2f} s)", f / L["restore_s"], ">= 0.8",
                  f / L["restore_s"] >= 0.8)
    if L and "restic" in T:
        r = L["incr_bytes"] / T["restic"]["incr_bytes"]
        ratio("stored size vs restic (after full+incr)", r, "<= 1.0x", r <= 1.0)
        print(f"    (after the full image alone: {L['full_bytes'] / T['restic']['full_bytes']:.2f}x)")
    if L and lm["full"]:
        print()
        print("where livemount's time went (seconds summed over the threads that spent them; stages overlap):")
        for name in ("full", "incr"):
            st = lm[name]["stats"]
            t = st.get("time", {})
            print(f"  {name:<4} ({st['seconds']:.2f} s): " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in t.items()))
    if L and any(p in T for p in ("restic", "borg", "casync")):
        print()
        print("against the peers (information; the goals are the ratios above):")
        for peer in ("restic", "borg", "casync"):
            if peer in T:
                P = T[peer]
                print(f"  {peer:<7} ingest {P['full_s'] / L['full_s']:.2f}x faster, incremental {P['incr_s'] / L['incr_s']:.2f}x, "
                      f"restore {P['restore_s'] / L['restore_s']:.2f}x, stored {L['incr_bytes'] / P['incr_bytes']:.2f}x")
    res["goals"] = goals

    if lf:
        print()
        print(f"single-core speeds on the full image ({lf['sample_bytes'] / MiB:.0f} MiB sample of non-zero chunks): "
              f"BLAKE3 {lf['blake3_mib_s']:,.0f} MiB/s, zstd -{lf['zstd_level']} compress "
              f"{lf['zstd_compress_mib_s']:,.0f} MiB/s (ratio {lf['zstd_ratio']:.2f}), decompress "
              f"{lf['zstd_decompress_mib_s']:,.0f} MiB/s")

    if res["sweep"]:
        print()
        hdr = (f"{'chunk':>6} {'data':>10} {'stored':>10} {'dedup':>7} {'full ingest':>12} {'incr ingest':>12} "
               f"{'cold 4K read median':>20} {'p99':>9}")
        print("chunk-size sweep (full + incremental in one library; cold random 4 KiB reads of the incremental):")
        print(hdr)
        print("-" * len(hdr))
        for r in res["sweep"]:
            print(f"{r['chunk_size']:>6} {r['data_bytes'] / MiB:>6,.0f} MiB {r['stored_bytes'] / MiB:>6,.0f} MiB "
                  f"{r['reduction_ratio']:>6.2f}x {r['full_s']:>10.1f} s {r['incr_s']:>10.1f} s "
                  f"{r['median_ms']:>17.2f} ms {r['p99_ms']:>6.2f} ms")
        print("(dedup = data bytes / stored bytes, dedup and compression together, from `library stats`; data bytes count"
              " whole non-zero chunks, so they grow with the chunk size: compare the stored column across sizes)")
        # The default trades three things. Storage first: sizes within 2% of the least stored bytes (the goal is
        # to store no more than restic). Ingest next: sizes taking more than 2x the fastest full+incremental ingest
        # are out (a wide margin: this machine is shared and ingest times are noisy). Then the fastest cold read.
        best = min(r["stored_bytes"] for r in res["sweep"])
        fastest = min(r["full_s"] + r["incr_s"] for r in res["sweep"])
        ok = [r for r in res["sweep"]
              if r["stored_bytes"] <= 1.02 * best and r["full_s"] + r["incr_s"] <= 2 * fastest]
        pick = min(ok or res["sweep"], key=lambda r: r["median_ms"])
        res["recommended_chunk_size"] = pick["chunk_size"]
        print(f"recommendation: default chunk size {pick['chunk_size']}: stores {pick['stored_bytes'] / best:.2f}x the "
              f"least, ingests in {(pick['full_s'] + pick['incr_s']) / fastest:.2f}x the fastest time, cold read "
              f"{pick['median_ms']:.2f} ms median (rule: storage within 2%, ingest within 2x, then fastest read); "
              f"library default today: {res['livemount']['library_stats']['chunk_size'] // 1024}K")

    json.dump(res, open(env["RESULTS"], "w"), indent=2)
    print()
    print(f"results written to {env['RESULTS']}")


# ---------------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------------
# Subcommand: (function, positional arguments, the last one takes the rest of the line).
# ---------------------------------------------------------------------------------------------------------
# bench/cloud.sh
# ---------------------------------------------------------------------------------------------------------

def cmd_summary_cloud(argv):
    """summary-cloud: cloud-results.json and the table of bench/cloud.sh (inputs in the environment)."""
    env = os.environ
    work = env["WORK"]
    figs = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "figures")) if "=" in l)
    boots = [json.loads(l) for l in open(os.path.join(work, "boots.jsonl")) if l.strip()]
    med = lambda xs: statistics.median(xs) if xs else None
    of = lambda prefix: med([float(v) for k, v in figs.items() if k.startswith(prefix)])
    out = {"run": run_facts(env)}
    if "upload.disk_bytes" in figs:
        lm_up, lm_only = of("upload.lm."), of("upload.lm_upload.")
        cs_up, cs_nowait = of("upload.coldsnap."), of("upload.coldsnap_nowait.")
        nonzero = int(figs["upload.nonzero_bytes"])
        out["upload"] = {
            "disk_bytes": int(figs["upload.disk_bytes"]), "nonzero_bytes": nonzero,
            "livemount_command_s": lm_up, "livemount_upload_s": lm_only,
            "coldsnap_wait_s": cs_up, "coldsnap_without_wait_s": cs_nowait,
            "ratio_coldsnap_wait_over_livemount_command": cs_up / lm_up,
            "ratio_coldsnap_without_wait_over_livemount_upload": cs_nowait / lm_only, "goal": ">= 1.0",
        }
    lm_boot = [b for b in boots if b["name"].startswith("lm.")]
    tgt_boot = [b for b in boots if b["name"].startswith("tgt.")]
    if lm_boot and tgt_boot:
        lm_marker = med([b["marker_s"] for b in lm_boot])
        lm_mount = med([float(figs[b["name"] + ".mount_s"]) for b in lm_boot])
        lm_whole = med([float(figs[b["name"] + ".mount_s"]) + b["marker_s"] for b in lm_boot])
        tgt_marker = med([b["marker_s"] for b in tgt_boot])
        out["boot"] = {"livemount_mount_s": lm_mount, "livemount_boot_to_marker_s": lm_marker,
                       "livemount_mount_to_marker_s": lm_whole, "tgt_boot_to_marker_s": tgt_marker,
                       "ratio_whole": lm_whole / tgt_marker, "ratio_boot": lm_marker / tgt_marker,
                       "goal": "<= 1.2", "boots": boots}
    if "backup.disk_bytes" in figs:
        local, cloud, standin = of("backup.local."), of("backup.cloud."), of("backup.standin.")
        # Per round: the job's time less what the stand-in spent answering it.
        own = med([float(figs["backup.cloud." + k.rsplit(".", 1)[1]]) - float(v)
                   for k, v in figs.items() if k.startswith("backup.standin.")])
        out["backup"] = {"disk_bytes": int(figs["backup.disk_bytes"]), "local_backup_create_s": local,
                         "cloud_backup_s": cloud, "standin_answering_s": standin, "cloud_backup_own_s": own,
                         "ratio_cloud_over_local": cloud / local, "ratio_own_over_local": own / local,
                         "goal": "<= 1.1"}
    if "restore.disk_bytes" in figs:
        lm, cs = of("restore.lm."), of("restore.coldsnap.")
        allocated = int(figs["restore.allocated_bytes"])
        out["restore"] = {"disk_bytes": int(figs["restore.disk_bytes"]), "allocated_bytes": allocated,
                          "livemount_restore_as_image_s": lm, "coldsnap_upload_wait_s": cs,
                          "livemount_mib_s": allocated / 2**20 / lm, "coldsnap_mib_s": allocated / 2**20 / cs,
                          "ratio_livemount_over_coldsnap_throughput": cs / lm, "goal": ">= 1.0"}
    if "snapshot.disk_bytes" in figs:
        full, incr, cs = of("snapshot.full."), of("snapshot.incremental."), of("snapshot.coldsnap.")
        out["snapshot"] = {"disk_bytes": int(figs["snapshot.disk_bytes"]),
                           "allocated_bytes": int(figs["snapshot.allocated_bytes"]),
                           "livemount_full_s": full, "livemount_incremental_s": incr, "coldsnap_download_s": cs,
                           "incremental_blocks_read": of("snapshot.incremental_blocks."),
                           "ratio_coldsnap_over_full": cs / full, "goal_full": ">= 1.5",
                           "ratio_full_over_incremental": full / incr, "goal_incremental": ">= 20",
                           "standin_get_snapshot_block_s_full": of("snapshot.full_standin."),
                           "standin_get_snapshot_block_s_coldsnap": of("snapshot.coldsnap_standin.")}
        cold, trips = os.path.join(work, "snap-cold-reads.json"), os.path.join(work, "snap-round-trips.json")
        if os.path.exists(cold) and os.path.exists(trips):
            def pct(path):
                xs = sorted(json.load(open(path))["lat_ns"])
                p = lambda q: xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))] / 1e6
                return {"reads": len(xs), "median_ms": p(50), "p99_ms": p(99)}
            c, t = pct(cold), pct(trips)
            out["snapshot"]["cold_reads"] = {"mounted_snapshot": c, "get_snapshot_block": t,
                                             "ratio_median": c["median_ms"] / t["median_ms"],
                                             "ratio_p99": c["p99_ms"] / t["p99_ms"], "goal_median": "<= 1.5"}
    if "far.disk_bytes" in figs:
        far = {"disk_bytes": int(figs["far.disk_bytes"]), "delay_ms": float(figs["far.delay_ms"]), "goal": ">= 100 MiB/s recalled, delayed"}
        for how in ("delayed", "direct"):
            if f"far.{how}.fio_s" in figs:
                t = float(figs[f"far.{how}.fio_s"])
                rec = int(figs[f"far.{how}.bytes_recalled"])
                far[how] = {"seconds": t, "bytes_recalled": rec, "recalled_mib_s": rec / 2**20 / t,
                            "disk_mib_s": int(figs[f"far.{how}.fio_bytes"]) / 2**20 / t}
                if f"far.{how}.boot_marker_s" in figs:
                    far[how]["boot"] = {"mount_s": float(figs[f"far.{how}.boot_mount_s"]),
                                        "marker_s": float(figs[f"far.{how}.boot_marker_s"]),
                                        "recalled_after_mount": int(figs[f"far.{how}.after_mount.bytes_recalled"]),
                                        "recalled_after_boot": int(figs[f"far.{how}.after_boot.bytes_recalled"])}
        if far.get("delayed", {}).get("boot") and far.get("direct", {}).get("boot"):
            d, n = far["delayed"]["boot"], far["direct"]["boot"]
            far["boot_ratio_marker"] = d["marker_s"] / n["marker_s"]
            far["boot_ratio_mount_and_marker"] = (d["mount_s"] + d["marker_s"]) / (n["mount_s"] + n["marker_s"])
        out["far"] = far
    json.dump(out, open(env["RESULTS"], "w"), indent=2)
    print(f"\ncloud benchmark (load {env['LOAD']}; {env['VERSIONS']})")
    if "upload" in out:
        u = out["upload"]
        print(f"  upload of the {u['disk_bytes'] / 2**20:.0f} MiB iPXE disk ({u['nonzero_bytes'] / 2**20:.2f} MiB non-zero), medians:")
        print(f"    livemount cloud image ipxe {u['livemount_command_s']:6.2f} s (its upload, wait and register "
              f"{u['livemount_upload_s']:6.2f} s)")
        print(f"    coldsnap upload --wait     {u['coldsnap_wait_s']:6.2f} s   ratio to livemount's command "
              f"{u['ratio_coldsnap_wait_over_livemount_command']:.2f}x (goal >= 1)")
        print(f"    coldsnap upload            {u['coldsnap_without_wait_s']:6.2f} s   ratio to livemount's upload "
              f"{u['ratio_coldsnap_without_wait_over_livemount_upload']:.2f}x (goal >= 1)")
    if "boot" in out:
        b = out["boot"]
        print(f"  boot    livemount: mount --boot --cloud {b['livemount_mount_s']:6.1f} s + instance to marker "
              f"{b['livemount_boot_to_marker_s']:6.1f} s = {b['livemount_mount_to_marker_s']:6.1f} s;  "
              f"tgt: instance to marker {b['tgt_boot_to_marker_s']:6.1f} s")
        print(f"          ratio whole {b['ratio_whole']:.2f}x, boot alone {b['ratio_boot']:.2f}x (goal <= 1.2)")
    if "backup" in out:
        b = out["backup"]
        print(f"  backup  of a {b['disk_bytes'] / 2**20:.0f} MiB instance disk, medians: local backup create "
              f"{b['local_backup_create_s']:6.2f} s, cloud backup {b['cloud_backup_s']:6.2f} s;  "
              f"ratio {b['ratio_cloud_over_local']:.2f}x (goal <= 1.1)")
        print(f"          of which the stand-in answering {b['standin_answering_s']:6.2f} s (whole-file copies where "
              f"AWS copies lazily); the job's own {b['cloud_backup_own_s']:6.2f} s, ratio "
              f"{b['ratio_own_over_local']:.2f}x")
    if "restore" in out:
        r = out["restore"]
        print(f"  restore of a {r['disk_bytes'] / 2**20:.0f} MiB disk ({r['allocated_bytes'] / 2**20:.0f} MiB allocated) "
              f"as an image, medians: livemount {r['livemount_restore_as_image_s']:6.2f} s "
              f"({r['livemount_mib_s']:.0f} MiB/s), coldsnap upload --wait {r['coldsnap_upload_wait_s']:6.2f} s "
              f"({r['coldsnap_mib_s']:.0f} MiB/s);  ratio {r['ratio_livemount_over_coldsnap_throughput']:.2f}x (goal >= 1)")
    if "snapshot" in out:
        r = out["snapshot"]
        print(f"  snapshot of a {r['disk_bytes'] / 2**20:.0f} MiB disk ({r['allocated_bytes'] / 2**20:.0f} MiB allocated), "
              f"medians: backup create ebs: {r['livemount_full_s']:6.2f} s, coldsnap download {r['coldsnap_download_s']:6.2f} s;"
              f"  ratio {r['ratio_coldsnap_over_full']:.2f}x (goal >= 1.5)")
        print(f"          incremental of 1% changed ({r['incremental_blocks_read']:.0f} blocks read) "
              f"{r['livemount_incremental_s']:6.2f} s;  full / incremental {r['ratio_full_over_incremental']:.1f}x (goal >= 20)")
        if r.get("standin_get_snapshot_block_s_full") is not None:
            fl, cf = r["standin_get_snapshot_block_s_full"], r["standin_get_snapshot_block_s_coldsnap"]
            print(f"          the stand-in answering GetSnapshotBlock (one call at a time: the floor of both): "
                  f"{fl:6.2f} s for the backup ({r['livemount_full_s'] / fl:.2f}x the floor), {cf:6.2f} s for "
                  f"coldsnap ({r['coldsnap_download_s'] / cf:.2f}x the floor)")
        if "cold_reads" in r:
            c = r["cold_reads"]
            m, t = c["mounted_snapshot"], c["get_snapshot_block"]
            print(f"          cold random 4 KiB reads ({m['reads']}): mounted snapshot median {m['median_ms']:.2f} ms, "
                  f"p99 {m['p99_ms']:.2f} ms; one GetSnapshotBlock median {t['median_ms']:.2f} ms, p99 "
                  f"{t['p99_ms']:.2f} ms;  ratio median {c['ratio_median']:.2f}x (goal <= 1.5), p99 {c['ratio_p99']:.2f}x")
    if "far" in out:
        f = out["far"]
        print(f"  far store: a {f['disk_bytes'] / 2**20:.0f} MiB snapshot read whole and cold through a mount's FUSE file "
              f"(fio 1 MiB, 16 in flight), {f['delay_ms']:.0f} ms added per request when delayed:")
        for how in ("delayed", "direct"):
            if how in f:
                x = f[how]
                print(f"          {how:<8} {x['seconds']:6.2f} s: {x['recalled_mib_s']:7.1f} MiB/s recalled "
                      f"({x['bytes_recalled'] / 2**20:.0f} MiB), {x['disk_mib_s']:7.1f} MiB/s of the disk")
        for how in ("delayed", "direct"):
            b = f.get(how, {}).get("boot")
            if b:
                print(f"          boot {how:<8} mount --boot {b['mount_s']:6.1f} s ({b['recalled_after_mount'] / 2**20:.0f} MiB "
                      f"recalled), QEMU to marker {b['marker_s']:6.1f} s ({b['recalled_after_boot'] / 2**20:.0f} MiB after)")
        if "boot_ratio_marker" in f:
            print(f"          boot delayed / direct: to the marker {f['boot_ratio_marker']:.2f}x, mount and boot "
                  f"{f['boot_ratio_mount_and_marker']:.2f}x (goal <= 1.5)")
        if "delayed" in f:
            print(f"          goal >= 100 MiB/s recalled with the delay: "
                  f"{'MET' if f['delayed']['recalled_mib_s'] >= 100 else 'NOT MET'}")
    print(f"  results: {env['RESULTS']}")


def synthetic_block(chunk):
    """The 4 KiB at the start of chunk CHUNK of memory.sh's synthetic disk: distinct per chunk, compressible."""
    return struct.pack("<Q", chunk + 1) * 512


def cmd_memory_disk(argv):
    """memory-disk IMAGE SIZE CHUNK: a sparse disk of SIZE bytes whose every CHUNK-byte chunk starts with 4 KiB
    of its own (synthetic_block) and is a hole after it: every chunk distinct, the file only SIZE/CHUNK*4 KiB
    on disk (memory.sh)."""
    path, size, chunk = argv[1], int(argv[2]), int(argv[3])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    for i in range(size // chunk):
        os.pwrite(fd, synthetic_block(i), i * chunk)
    os.fsync(fd)
    os.close(fd)


def cmd_memory_reads(argv):
    """memory-reads FILE SIZE CHUNK N SEED: N reads of 4 KiB at the start of random chunks of a synthetic disk
    (O_DIRECT, so each reaches the daemon), each checked; prints the number of reads that differ."""
    path, size, chunk, n, seed = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    bad = 0
    for _ in range(n):
        i = rng.randrange(size // chunk)
        got = os.preadv(fd, [buf], i * chunk)
        bad += got != 4096 or buf[:4096] != synthetic_block(i)
    os.close(fd)
    print(bad)


def cmd_summary_memory(argv):
    """summary-memory: the memory report of memory.sh from its figures (env FIGURES, RESULTS)."""
    env = os.environ
    f = dict(line.rstrip("\n").split("=", 1) for line in open(env["FIGURES"]))
    sizes = f["sizes"].split()
    gib = {s: int(f[f"size_{s}"]) / 2**30 for s in sizes}
    small, large = sizes[0], sizes[-1]
    mib = lambda kib: int(kib) / 1024
    out = {"load": f.get("load"), "library": f.get("library", "folder"), "sizes_gib": gib, "backup_create_peak_mib": {}, "mount_growth_mib": {}}
    print("\nlivemount memory (bench/memory.sh)")
    print(f"  synthetic disks: every 64 KiB chunk distinct; library: {f.get('library', 'folder')}; "
          f"load average {f.get('load')}")
    for s in sizes:
        out["backup_create_peak_mib"][s] = mib(f[f"create_rss_{s}"])
        print(f"  backup create of {gib[s]:6.0f} GiB ({int(f[f'chunks_{s}']):>9,} chunks): peak RSS "
              f"{mib(f[f'create_rss_{s}']):7.1f} MiB in {float(f[f'create_s_{s}']):6.1f} s")
    for s in sizes:
        growth = mib(int(f[f"rss_after_{s}"]) - int(f[f"rss_before_{s}"]))
        out["mount_growth_mib"][s] = growth
        print(f"  daemon: mount of {gib[s]:6.0f} GiB and {f['reads']} random reads: RSS grew {growth:6.1f} MiB "
              f"(mount created in {float(f[f'mount_ms_{s}']):.0f} ms)")
    g_small, g_large = out["mount_growth_mib"][small], out["mount_growth_mib"][large]
    slope = (g_large - g_small) / (gib[large] - gib[small]) * 1024
    naive = g_large / gib[large] * 1024
    peak = max(out["backup_create_peak_mib"].values())
    out.update({"mount_mib_per_tib_slope": slope, "mount_mib_per_tib_naive": naive})
    print(f"  per TiB mounted: {slope:.1f} MiB from the two sizes' difference ({small} -> {large}); "
          f"{naive:.1f} MiB counting all of the {large} mount's growth as proportional (goal <= 64)")
    print(f"  backup create peak: {peak:.1f} MiB at most (goal < 256 for any disk size); "
          f"{large} over {small}: {out['backup_create_peak_mib'][large] / out['backup_create_peak_mib'][small]:.2f}x")
    print(f"  mount creation of the {large} backup: {float(f[f'mount_ms_{large}']):.0f} ms (goal < 200)")
    json.dump(out, open(env["RESULTS"], "w"), indent=2)
    print(f"  results: {env['RESULTS']}")


# ---------------------------------------------------------------------------------------------------------
# bench/s3.sh
# ---------------------------------------------------------------------------------------------------------
def cmd_free_port_pairs(argv):
    """free-port-pairs N: N distinct ports of 127.0.0.1 that are free, each with PORT + 10000 free too (the
    gRPC port SeaweedFS derives from each HTTP port), all held until all are found; one line (s3.sh)."""
    n, held, ports = int(argv[1]), [], []
    while len(ports) < n:
        a = socket.socket()
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        if port >= 55000 or port in ports:
            a.close()
            continue
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", port + 10000))
        except OSError:
            a.close(), b.close()
            continue
        held += [a, b]
        ports.append(port)
    print(*ports)


def s3_client():
    """boto3 on the S3 gateway of the environment (AWS_ENDPOINT_URL and credentials), path-style."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def cmd_s3(argv):
    """s3 create BUCKET | s3 usage BUCKET: creates a bucket, or prints the number of objects in it and the sum
    of their sizes ("OBJECTS BYTES"), through the gateway the environment names (s3.sh)."""
    s3 = s3_client()
    action, bucket = argv[1], argv[2]
    if action == "create":
        s3.create_bucket(Bucket=bucket)
    elif action == "usage":
        count = size = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                count, size = count + 1, size + o["Size"]
        print(count, size)
    else:
        sys.exit(f"s3: unknown action {action}")


def http_status(port, path):
    """Status and body of a plain GET to 127.0.0.1:PORT, or (None, '') when nothing answers."""
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    except OSError:
        return None, ""


def cmd_seaweed_ready(argv):
    """seaweed-ready MASTER_PORT S3_PORT VOLUMES TIMEOUT PID...: waits until the master answers and knows
    VOLUMES volume servers, the S3 gateway refuses an anonymous ListBuckets (403: the identities are applied)
    and takes a signed one; fails when a PID exits or TIMEOUT seconds pass (s3.sh)."""
    master, gw, volumes, timeout = int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    pids = [int(p) for p in argv[5:]]
    deadline = time.monotonic() + timeout
    step = "the master answers"

    def ready():
        nonlocal step
        step = "the master knows the volume servers"
        status, body = http_status(master, "/dir/status")
        if status != 200:
            return False
        topo = json.loads(body)["Topology"]
        nodes = [n for dc in topo.get("DataCenters") or [] for r in dc.get("Racks") or []
                 for n in r.get("DataNodes") or []]
        if len(nodes) < volumes:
            return False
        step = "the S3 gateway answers"
        status, body = http_status(gw, "/")
        if status is None:
            return False
        if status != 403:
            sys.exit(f"anonymous ListBuckets answered {status}, not 403 (is -s3.config applied?): {body[:300]}")
        step = "a signed ListBuckets works"
        try:
            s3_client().list_buckets()
        except Exception:
            return False
        return True

    while not ready():
        for p in pids:
            try:
                os.kill(p, 0)
            except ProcessLookupError:
                sys.exit(f"SeaweedFS process {p} exited while waiting until {step}")
        if time.monotonic() > deadline:
            sys.exit(f"SeaweedFS: timed out waiting until {step}")
        time.sleep(0.1)


def cmd_s3_gets(argv):
    """s3-gets METRICS_PORT: the S3 GetObject requests the gateway answered with data (200/206) since it
    started, all buckets: the count of its time-to-first-byte histogram for type GET (set before the body
    goes out, so exact once the client has its answer; HEAD, 304 and errors are not in it) (s3.sh)."""
    status, body = http_status(int(argv[1]), "/metrics")
    if status != 200:
        sys.exit(f"metrics: HTTP {status}")
    total = 0.0
    for line in body.splitlines():
        if line.startswith("SeaweedFS_s3_time_to_first_byte_millisecond_count{"):
            labels, value = line[line.index("{") + 1:].split("} ", 1)
            if 'type="GET"' in labels.split(","):
                total += float(value)
    print(int(total))


def cmd_s3_range_gets(argv):
    """s3-range-gets BUCKET PREFIX N SIZE SEED OUT: N ranged GETs of SIZE bytes at random places of the
    objects PREFIX...pack of the bucket (drawn from SEED, weighted by size: the same ranges for the same
    objects and seed), one at a time on one kept-alive connection, each timed from sending the request to the
    body's last byte. The requests are presigned (boto3) before any is timed, so that the time is the store's
    and the loopback's, with nearly none of the client's; OUT in fuse-reads' format (s3.sh)."""
    import http.client
    import urllib.parse
    bucket, prefix, n, size, seed, out = argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]), argv[6]
    s3 = s3_client()
    objs = [(o["Key"], o["Size"])
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", []) if o["Key"].endswith(".pack") and o["Size"] > size]
    if not objs:
        sys.exit(f"no pack object larger than {size} bytes under s3://{bucket}/{prefix}")
    rng = random.Random(seed)
    urls = {}
    requests = []
    for key, sz in rng.choices(objs, weights=[sz for _, sz in objs], k=n):
        if key not in urls:
            u = urllib.parse.urlparse(s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600))
            urls[key] = u.path + "?" + u.query
        start = rng.randrange(sz - size)
        requests.append((urls[key], f"bytes={start}-{start + size - 1}"))
    endpoint = urllib.parse.urlparse(os.environ["AWS_ENDPOINT_URL"])
    conn = http.client.HTTPConnection(endpoint.hostname, endpoint.port)
    lat = []
    for path, rng_header in requests:
        t0 = time.perf_counter_ns()
        conn.request("GET", path, headers={"Range": rng_header})
        r = conn.getresponse()
        body = r.read()
        lat.append(time.perf_counter_ns() - t0)
        if r.status != 206 or len(body) != size:
            sys.exit(f"GET {path.split('?')[0]} {rng_header}: {r.status}, {len(body)} bytes: {body[:200]!r}")
    json.dump({"how": "presigned ranged GET", "direct": False, "lat_ns": lat, "mismatches": []}, open(out, "w"))


def cmd_fuse_reads_parallel(argv):
    """fuse-reads-parallel FILE OFFSETS THREADS OUT: the offsets of OFFSETS (fuse-offsets) read 4 KiB each by
    THREADS threads at once (THREADS reads outstanding), O_DIRECT, each taking the next offset in the file's
    order, each read timed (perf_counter_ns around the read call only) and checked against the raw image's
    digest; OUT in fuse-reads' format, with the threads and the wall time of the whole pass (s3.sh)."""
    import threading
    path, offsets, threads, out = argv[1], argv[2], int(argv[3]), argv[4]
    B = 4096
    items = [(int(a), b) for a, b in (line.split() for line in open(offsets))]
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    lat, bad, errors, lock = [0] * len(items), [], [], threading.Lock()
    todo = iter(range(len(items)))

    def reader():
        buf = mmap.mmap(-1, B)      # page-aligned, as O_DIRECT wants
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            off, digest = items[i]
            try:
                t0 = time.perf_counter_ns()
                n = os.preadv(fd, [buf], off)
                lat[i] = time.perf_counter_ns() - t0
            except OSError as e:
                with lock:
                    errors.append(f"offset {off}: {e}")
                return
            if n != B or hashlib.blake2b(buf[:n], digest_size=16).hexdigest() != digest:
                with lock:
                    bad.append(off)

    seconds = timed_threads(reader, threads)
    os.close(fd)
    if errors:
        sys.exit(f"{path}: {len(errors)} reads failed, first: {errors[0]}")
    json.dump({"direct": True, "threads": threads, "seconds": seconds, "lat_ns": lat, "mismatches": sorted(bad)},
              open(out, "w"))
    if bad:
        print(f"{path}: {len(bad)} reads differ from the raw image (first at offset {min(bad)})", file=sys.stderr)


def cmd_fuse_seq_reads(argv):
    """fuse-seq-reads FILE THREADS OUT: FILE read whole in 1 MiB reads in order by THREADS threads at once
    (THREADS reads outstanding: each thread takes the next 1 MiB of the file), O_DIRECT, each read timed;
    OUT gets the wall time, the bytes and the latencies (s3.sh). Threads, not libaio: on a FUSE file whose
    daemon does not ask for asynchronous direct I/O (FUSE_ASYNC_DIO), io_submit performs each read before it
    returns, so libaio's queue depth never reaches the daemon."""
    import threading
    path, threads, out = argv[1], int(argv[2]), argv[3]
    B = 1 << 20
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    size = os.fstat(fd).st_size
    count = -(-size // B)
    lat, done, errors, lock = [0] * count, [0] * count, [], threading.Lock()
    todo = iter(range(count))

    def reader():
        buf = mmap.mmap(-1, B)      # page-aligned, as O_DIRECT wants
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                t0 = time.perf_counter_ns()
                done[i] = os.preadv(fd, [buf], i * B)
                lat[i] = time.perf_counter_ns() - t0
            except OSError as e:
                with lock:
                    errors.append(f"offset {i * B}: {e}")
                return

    seconds = timed_threads(reader, threads)
    os.close(fd)
    if errors:
        sys.exit(f"{path}: {len(errors)} reads failed, first: {errors[0]}")
    if sum(done) != size:
        sys.exit(f"{path}: read {sum(done)} bytes of {size}")
    json.dump({"threads": threads, "block": B, "seconds": seconds, "bytes": sum(done), "lat_ns": lat}, open(out, "w"))


def cmd_conn_sampler(argv):
    """conn-sampler PORT OUT [FILE]: every 0.1 s until killed, the established TCP connections of this machine
    to PORT of 127.0.0.1 (/proc/net/tcp: a client's connections to a store) and, with FILE (a file of a FUSE
    mount) when fusectl is mounted, the requests of that mount's FUSE connection waiting for an answer
    (/sys/fs/fuse/connections/DEV/waiting); one "SECONDS CONNECTIONS WAITING" line each, WAITING "-" when
    not known (s3.sh)."""
    port, out = int(argv[1]), open(argv[2], "w", buffering=1)
    want = f"0100007F:{port:04X}"
    waiting = None
    if len(argv) > 3:
        waiting = f"/sys/fs/fuse/connections/{os.minor(os.stat(argv[3]).st_dev)}/waiting"
        if not os.path.exists(waiting):
            waiting = None
    t0 = time.monotonic()
    while True:
        with open("/proc/net/tcp") as f:
            next(f)
            n = sum(1 for line in f if (p := line.split())[2] == want and p[3] == "01")
        w = open(waiting).read().strip() if waiting else "-"
        out.write(f"{time.monotonic() - t0:.2f} {n} {w}\n")
        time.sleep(0.1)


def cmd_summary_s3(argv):
    """summary-s3: s3-results.json and the table of bench/s3.sh (inputs in the environment)."""
    env = os.environ
    work = env["WORK"]
    MiB = 1 << 20

    load = functools.partial(load_work_json, work)
    f = read_figures(work)
    img = image_info

    def lat(reads):
        s = sorted(reads["lat_ns"])
        p = lambda q: s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] / 1e6
        return {"reads": len(s), "median_ms": p(50), "p90_ms": p(90), "p99_ms": p(99), "max_ms": s[-1] / 1e6,
                "mean_ms": sum(s) / len(s) / 1e6, "over_5ms": sum(v > 5e6 for v in s), "over_20ms": sum(v > 20e6 for v in s),
                "direct": reads.get("direct", False), "mismatches": len(reads["mismatches"])}

    res = {**run_facts(env), "store": env["STORE"], "images": {"full": img(env["FULL"]), "incr": img(env["INCR"])},
           "tools": {}, "livemount": {"full": load("livemount-full.json"), "incr": load("livemount-incr.json")}}
    for tool in ("livemount", "restic"):
        t = {k.split(".", 1)[1]: v for k, v in f.items() if k.startswith(tool + ".")}
        if t:
            res["tools"][tool] = t
    print()
    print("=" * 100)
    print(f"livemount S3 benchmark  {res['date']}  ({res['cores']} cores; page cache "
          f"{'dropped before every timed step' if res['cold_cache'] else 'NOT dropped: WARM figures'})")
    print(f"versions: {res['versions']}")
    print(f"store: {res['store']}")
    print(f"load average (1 min) at start -> end: {res['load_average']}  (figures need a quiet machine)")
    for k, v in res["images"].items():
        print(f"image {k:<5} {v['path']}: {v['size'] / MiB:,.0f} MiB, {v['allocated'] / MiB:,.0f} MiB allocated")

    T, goals = res["tools"], []
    print()
    hdr = (f"{'ingest':<10} {'full image':>20} {'incremental':>20} {'full+incr':>10} {'objects':>8} "
           f"{'stored':>11} {'on disk, 2 copies':>18}")
    print(hdr)
    print("-" * len(hdr))
    for name, t in T.items():
        def cell(key, image):
            v = t.get(key)
            return f"{v:7.1f} s {res['images'][image]['allocated'] / MiB / v:6.0f} MiB/s" if v else "-"
        print(f"{name:<10} {cell('full_s', 'full'):>20} {cell('incr_s', 'incr'):>20} "
              f"{t.get('full_s', 0) + t.get('incr_s', 0):8.1f} s {int(t.get('objects', 0)):>8} "
              f"{t.get('bytes', 0) / MiB:>7,.0f} MiB {t.get('disk_bytes', 0) / MiB:>14,.0f} MiB")
    print("(MiB/s over the image's allocated bytes; stored = the sizes of the objects in the tool's bucket after both;"
          " on disk = its collection's volume files on the three volume servers)")
    if any("full_cpu_s" in t for t in T.values()):
        print(f"CPU seconds during each ingest ({res['cores']} cores: at most {res['cores']} s of CPU per second of wall time):")
        for name, t in T.items():
            print(f"  {name:<10} " + "; ".join(
                f"{image}: {name} {t[image + '_cpu_s']:.1f} s + SeaweedFS {t[image + '_store_cpu_s']:.1f} s in "
                f"{t[image + '_s']:.1f} s ({(t[image + '_cpu_s'] + t[image + '_store_cpu_s']) / t[image + '_s']:.2f} cores busy)"
                for image in ("full", "incr") if image + "_cpu_s" in t))
    lm = res["livemount"]
    if lm["full"] and lm["incr"]:
        for name in ("full", "incr"):
            s = lm[name]["stats"]
            print(f"livemount {name:<4}: read {s['bytes_read'] / MiB:,.0f} MiB, stored {s['new_bytes_stored'] / MiB:,.0f} MiB "
                  f"new ({s['chunks_new']} chunks new, {s['chunks_reused']} reused, {s['chunks_zero']} zero)")
        print("where livemount's ingest time went (seconds summed over the threads that spent them; stages overlap):")
        for name in ("full", "incr"):
            s = lm[name]["stats"]
            print(f"  {name:<4} ({s['seconds']:.2f} s): "
                  + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in s.get("time", {}).items()))

    cold = load("reads-cold.json")
    if cold:
        c = res["cold_reads"] = {**lat(cold), "gets": int(f["cold.gets"]),
                                 "recalled_chunks": int(f.get("cold.recalled_chunks", -1))}
        print()
        print(f"cold random 4 KiB reads through a fresh mount of the S3 backup (disk 0 of `full`, "
              f"{'O_DIRECT' if c['direct'] else 'pread'}, one at a time, {c['mismatches']} mismatches):")
        print(f"  {c['reads']} reads: median {c['median_ms']:.3f} ms, p90 {c['p90_ms']:.3f} ms, p99 {c['p99_ms']:.3f} ms, "
              f"max {c['max_ms']:.1f} ms, mean {c['mean_ms']:.3f} ms")
        print(f"  slower than 5 ms: {c['over_5ms']}, than 20 ms: {c['over_20ms']}")
        print(f"  S3 GETs served during the reads: {c['gets']} ({c['gets'] / c['reads']:.2f} per read; the daemon's chunk cache "
              f"was empty); chunks recalled by the mount: {c['recalled_chunks']}")
        for how in ("cold", "warm"):
            r = load(f"store-gets-{how}.json")
            if r:
                g = res[f"store_gets_{how}"] = lat(r)
                print(f"  the store alone, {how + (' (page cache dropped)' if how == 'cold' else ' (the same again)'):<25} "
                      f"median {g['median_ms']:.3f} ms, p90 {g['p90_ms']:.3f} ms, p99 {g['p99_ms']:.3f} ms, "
                      f"max {g['max_ms']:.1f} ms")
        if "store_gets_cold" in res:
            print(f"    ({res['store_gets_cold']['reads']} presigned ranged GETs of {int(f['store.get_bytes'])} bytes, a stored "
                  f"chunk's mean size, at random places of the library's packs, one at a time on one connection)")
    storm = load("reads-storm-single.json")
    if storm and "storm.total_gets" in f:
        k = int(f["storm.mounts"])
        merged = {"lat_ns": [], "mismatches": [], "direct": True}
        for i in range(1, k + 1):
            r = load(f"reads-storm-{i}.json")
            merged["lat_ns"] += r["lat_ns"]
            merged["mismatches"] += r["mismatches"]
            merged["direct"] &= r["direct"]
        s = res["storm"] = {"mounts": k, "reads_per_mount": lat(storm)["reads"], "single_gets": int(f["storm.single_gets"]),
                            "total_gets": int(f["storm.total_gets"]), "single": lat(storm), "storm": lat(merged),
                            "storm_s": f["storm.s"]}
        s["ratio"] = s["total_gets"] / max(1, s["single_gets"])
        print()
        print(f"boot storm proxy: {k} fresh mounts of the same backup read the same {s['reads_per_mount']} random 4 KiB "
              f"blocks at the same time (each case with a restarted daemon, its chunk cache empty):")
        print(f"  one mount alone: {s['single_gets']} GETs, median {s['single']['median_ms']:.3f} ms, "
              f"p99 {s['single']['p99_ms']:.3f} ms")
        print(f"  {k} mounts at once: {s['total_gets']} GETs in {s['storm_s']:.2f} s, median {s['storm']['median_ms']:.3f} ms, "
              f"p99 {s['storm']['p99_ms']:.3f} ms ({s['storm']['mismatches']} mismatches)")

    if "far.delay_ms" in f:
        far = res["far"] = {"delay_ms": f["far.delay_ms"], "outstanding": int(f["far.outstanding"])}
        alloc = res["images"]["full"]["allocated"]

        def samples(name):
            """The most and the mean of the connections to the store, and of the FUSE requests waiting, over
            the samples of a case (None where not sampled)."""
            p = os.path.join(work, f"conns-{name}.txt")
            rows = [l.split() for l in open(p) if l.strip()] if os.path.exists(p) else []
            out = {}
            for key, col in (("connections", 1), ("fuse_waiting", 2)):
                xs = [int(r[col]) for r in rows if len(r) > col and r[col] != "-"]
                out[key] = {"most": max(xs), "mean": sum(xs) / len(xs)} if xs else None
            return out

        for where in ("near", "far"):
            w, g = {}, load(f"gets-{where}.json")
            if g:
                w["get"] = lat(g)
            seq = load(f"seq-{where}.json")
            if seq:
                t = seq["seconds"]
                xs = sorted(seq["lat_ns"])
                w["seq"] = {"seconds": t, "mib_s": alloc / MiB / t, "disk_mib_s": seq["bytes"] / MiB / t,
                            "threads": seq["threads"], "read_median_ms": xs[len(xs) // 2] / 1e6,
                            "bytes_recalled": int(f.get(f"far.{where}.threads.bytes_recalled", 0)),
                            "gets": int(f[f"far.{where}.threads_gets"]), **samples(f"threads-{where}")}
            fio = load(f"fio-{where}.json")
            if fio:
                r = fio["jobs"][0]["read"]
                t = r["runtime"] / 1000
                w["fio"] = {"seconds": t, "mib_s": alloc / MiB / t, "disk_mib_s": r["io_bytes"] / MiB / t,
                            "submit_ms_mean": r["slat_ns"]["mean"] / 1e6, "per_read_ms": t * 1000 / r["total_ios"],
                            "bytes_recalled": int(f.get(f"far.{where}.fio.bytes_recalled", 0)),
                            "gets": int(f[f"far.{where}.fio_gets"]), **samples(f"fio-{where}")}
            if f"far.{where}.restore_s" in f:
                t = f[f"far.{where}.restore_s"]
                w["restore"] = {"seconds": t, "mib_s": alloc / MiB / t, "gets": int(f[f"far.{where}.restore_gets"]),
                                **samples(f"restore-{where}")}
            rr = load(f"reads-rand-{where}.json")
            if rr:
                w["rand"] = {**lat(rr), "seconds": rr["seconds"], "iops": len(rr["lat_ns"]) / rr["seconds"],
                             "threads": rr["threads"], "gets": int(f[f"far.{where}.rand_gets"]),
                             **samples(f"rand-{where}")}
            for case in ("seq", "fio", "restore", "rand"):
                c = w.get(case)
                if c:
                    c["gets_per_s"] = c["gets"] / c["seconds"]
                    # Little's law: requests in flight = their rate x the time each takes (one GET alone).
                    if "get" in w:
                        c["gets_in_flight_est"] = c["gets_per_s"] * w["get"]["mean_ms"] / 1000
            if w:
                far[where] = w
        full_stats = (lm.get("full") or {}).get("stats", {})
        chunks = full_stats.get("chunks_new", 0) + full_stats.get("chunks_reused", 0) + full_stats.get("chunks_zero", 0)
        chunk = full_stats["disk_bytes"] // chunks if chunks else 0
        far["chunk_bytes"] = chunk
        if full_stats.get("chunks_new"):
            far["stored_chunk_bytes"] = full_stats["new_bytes_stored"] / full_stats["chunks_new"]
        print()
        print(f"far store: the same S3 library through bench/delay_relay.py in front of the gateway "
              f"(+{far['delay_ms']:.0f} ms per request) and, for reference, straight to it (near); each case a fresh "
              f"daemon (empty chunk cache) and a fresh mount of `full` (nothing recalled), the page cache dropped:")
        hdr = (f"  {'case':<34} {'where':<5} {'time':>8} {'MiB/s':>7} {'GETs':>6} {'GETs/s':>7} "
               f"{'conns most/mean':>15} {'in flight':>9} {'FUSE waiting':>12}")
        print(hdr)
        print("  " + "-" * (len(hdr) - 2))
        names = {"seq": f"cold sequential 1 MiB, {far['outstanding']} threads",
                 "fio": f"  the same, fio libaio iodepth {far['outstanding']}",
                 "restore": "restore (backup restore)", "rand": f"cold random 4 KiB, {far['outstanding']} threads"}
        for case in ("seq", "fio", "restore", "rand"):
            for where in ("near", "far"):
                c = far.get(where, {}).get(case)
                if not c:
                    continue
                cn, fw = c["connections"], c["fuse_waiting"]
                rate = f"{c['mib_s']:7.1f}" if "mib_s" in c else "-"
                conn = f"{cn['most']} / {cn['mean']:.1f}" if cn else "-"
                flight = f"~{c['gets_in_flight_est']:.1f}" if "gets_in_flight_est" in c else "-"
                waiting = f"{fw['most']} / {fw['mean']:.1f}" if fw else "-"
                print(f"  {names[case]:<34} {where:<5} {c['seconds']:6.1f} s {rate:>7} {c['gets']:>6} "
                      f"{c['gets_per_s']:>7.0f} {conn:>15} {flight:>9} {waiting:>12}")
        for where in ("near", "far"):
            c = far.get(where, {}).get("fio")
            if c:
                # A submission that takes as long as the read performed it (the kernel sent one read at a
                # time); a short one queued it (asynchronous direct I/O: the reads reach the daemon together).
                how = ("io_submit performs each read: one at a time reaches the daemon"
                       if c['submit_ms_mean'] > c['per_read_ms'] / 2 else
                       "io_submit only queues: the 16 reads reach the daemon together")
                print(f"  fio libaio {where:<4}: {c['per_read_ms']:.1f} ms per 1 MiB read, of which {c['submit_ms_mean']:.1f} ms "
                      f"inside io_submit ({how})")
        for where in ("near", "far"):
            c = far.get(where, {}).get("rand")
            if c:
                print(f"  cold random 4 KiB {where:<4}: {c['iops']:,.0f} IOPS, median {c['median_ms']:.2f} ms, "
                      f"p99 {c['p99_ms']:.2f} ms ({c['reads']} reads of non-zero blocks, {c['mismatches']} mismatches)")
        for where in ("near", "far"):
            g = far.get(where, {}).get("get")
            if g:
                print(f"  one ranged GET alone, {where:<4}: median {g['median_ms']:.2f} ms, mean {g['mean_ms']:.2f} ms, "
                      f"p99 {g['p99_ms']:.2f} ms ({g['reads']} GETs of a stored chunk's mean size, one at a time)")
        print(f"  (MiB/s of full.img's {alloc / MiB:,.0f} MiB allocated; GETs = S3 GETs the gateway answered with data; conns "
              f"= established connections to the store (the relay when far) sampled every 0.1 s; in flight = GETs/s x "
              f"the mean time of one GET alone (Little's law, an estimate); FUSE waiting = requests of the mount's FUSE "
              f"connection not yet answered (fusectl's `waiting`, most / mean; '-' without fusectl); chunks of "
              f"{chunk >> 10} KiB, {far.get('stored_chunk_bytes', 0) / 1024:.0f} KiB stored on average; neighbours in a pack "
              f"come with one GET, so GETs are fewer than chunks)")

    print()
    print("goals:")

    def goal(line, met, value, target):
        goals.append({"goal": line, "value": value, "target": target, "met": met})
        print(f"  {line}" + ("" if met is None else f"   {'MET' if met else 'NOT MET'}"))

    L, R = T.get("livemount"), T.get("restic")
    if L and R:
        lt, rt = L["full_s"] + L["incr_s"], R["full_s"] + R["incr_s"]
        goal(f"ingest into SeaweedFS: livemount {lt:.1f} s, restic {rt:.1f} s = {rt / lt:.2f} x restic (goal: at least 3x)",
             rt / lt >= 3, rt / lt, ">= 3")
        print(f"    (full image alone {R['full_s'] / L['full_s']:.2f}x, incremental alone {R['incr_s'] / L['incr_s']:.2f}x; "
              f"stored {L['bytes'] / R['bytes']:.2f}x restic's bytes)")
    if "cold_reads" in res:
        c = res["cold_reads"]
        goal(f"cold random 4 KiB through a mount of an S3 backup: median {c['median_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms "
             f"(goal: p99 under 5 ms on loopback)", c["p99_ms"] < 5, c["p99_ms"], "< 5 ms")
    if "storm" in res:
        s = res["storm"]
        goal(f"boot storm: {s['mounts']} mounts fetched {s['total_gets']} chunks from S3, one mount {s['single_gets']}: "
             f"ratio {s['ratio']:.2f} (goal: 1.0)", s["total_gets"] <= s["single_gets"], s["ratio"], "1.0")
    fs, fr = res.get("far", {}).get("far", {}).get("seq"), res.get("far", {}).get("far", {}).get("restore")
    if fs and fr:
        ratio = fs["mib_s"] / fr["mib_s"]
        goal(f"far store (+{res['far']['delay_ms']:.0f} ms per request): cold sequential through a mount "
             f"{fs['mib_s']:.1f} MiB/s, the library's restore {fr['mib_s']:.1f} MiB/s = {ratio:.2f}x (goal: at least 0.8x)",
             ratio >= 0.8, ratio, ">= 0.8")
        goal(f"far store (+{res['far']['delay_ms']:.0f} ms per request): cold sequential through a mount "
             f"{fs['mib_s']:.1f} MiB/s (goal: at least 100 MiB/s)", fs["mib_s"] >= 100, fs["mib_s"], ">= 100 MiB/s")
    res["goals"] = goals
    json.dump(res, open(env["RESULTS"], "w"), indent=2)
    print()
    print(f"results written to {env['RESULTS']}")


COMMANDS = {
    "json-get": (cmd_json_get, ["file", "key+"]),
    "mount-counters": (cmd_mount_counters, ["id", "first_disk?"]),
    "free-port": (cmd_free_port, []),
    "partition-of": (cmd_partition_of, []),
    "browse-root": (cmd_browse_root, ["browse_json", "file"]),
    "data-bytes": (cmd_data_bytes, ["file"]),
    "library-figures": (cmd_library_figures, ["show_json", "tag"]),
    "boot-run": (cmd_boot_run, ["name", "timeout", "console_log", "pid_file", "qemu..."]),
    "boot-verdict": (cmd_boot_verdict, ["boot_json"]),
    "boot-recall": (cmd_boot_recall, ["figures", "run"]),
    "summary-boot": (cmd_summary_boot, []),
    "summary-cloud": (cmd_summary_cloud, []),
    "fuse-offsets": (cmd_fuse_offsets, ["image", "n", "seed", "out"]),
    "distinct-blocks": (cmd_distinct_blocks, ["offsets", "block", "n", "out"]),
    "ebs-round-trips": (cmd_ebs_round_trips, ["endpoint", "creds_json", "snapshot", "offsets", "out"]),
    "fuse-reads": (cmd_fuse_reads, ["file", "offsets", "out"]),
    "fuse-pass": (cmd_fuse_pass, ["reads_json", "label"]),
    "summary-fuse": (cmd_summary_fuse, []),
    "iscsi-perf": (cmd_iscsi_perf, ["out", "target", "case", "rc", "cpu_s", "spec"]),
    "warmup-complete": (cmd_warmup_complete, ["figures"]),
    "cu": (cmd_cu, ["mode", "dir"]),
    "summary-iscsi": (cmd_summary_iscsi, []),
    "summary-library": (cmd_summary_library, []),
    "memory-disk": (cmd_memory_disk, ["image", "size", "chunk"]),
    "memory-reads": (cmd_memory_reads, ["file", "size", "chunk", "n", "seed"]),
    "summary-memory": (cmd_summary_memory, []),
    "free-port-pairs": (cmd_free_port_pairs, ["n"]),
    "s3": (cmd_s3, ["action", "bucket"]),
    "seaweed-ready": (cmd_seaweed_ready, ["master_port", "s3_port", "volumes", "timeout", "pid+"]),
    "s3-gets": (cmd_s3_gets, ["metrics_port"]),
    "s3-range-gets": (cmd_s3_range_gets, ["bucket", "prefix", "n", "size", "seed", "out"]),
    "fuse-reads-parallel": (cmd_fuse_reads_parallel, ["file", "offsets", "threads", "out"]),
    "fuse-seq-reads": (cmd_fuse_seq_reads, ["file", "threads", "out"]),
    "conn-sampler": (cmd_conn_sampler, ["port", "out", "file?"]),
    "summary-s3": (cmd_summary_s3, []),
}


def main():
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    subs = parser.add_subparsers(dest="command", required=True)
    for name, (fn, params) in COMMANDS.items():
        sub = subs.add_parser(name, help=fn.__doc__.split(":")[0], description=fn.__doc__)
        for p in params:
            if p.endswith("..."):
                sub.add_argument(p[:-3], nargs=argparse.REMAINDER)
            elif p.endswith("+"):
                sub.add_argument(p[:-1], nargs="+")
            elif p.endswith("?"):
                sub.add_argument(p[:-1], nargs="?")
            else:
                sub.add_argument(p)
    ns = parser.parse_args()
    fn, params = COMMANDS[ns.command]
    # argv as the script of old saw it: the positional arguments in order (boot-run keeps its "--").
    argv = [ns.command]
    for p in params:
        v = getattr(ns, p.rstrip(".+?"))
        if p.endswith("..."):
            argv += ["--"] + (v[1:] if v[:1] == ["--"] else v)
        elif isinstance(v, list):
            argv += v
        elif v is not None:
            argv.append(v)
    fn(argv)


if __name__ == "__main__":
    main()
