#!/usr/bin/env bash
# Crash loop of the library: `backup create` and `library gc` killed with SIGKILL at random moments, each
# kill followed by a verify of every finished backup and a rerun of what was killed. Not a CI test (a
# thousand rounds take a while): run it by hand after changing how the library writes.
#
# Each round: one of the disks gets 1 MiB of new data somewhere (so backups store new chunks and forgotten
# ones leave garbage), the oldest backup is forgotten when more than six are kept, then either `backup create`
# of a random disk or `library gc` starts, and is killed after a random time between 0 and 1.2x how long an
# uninterrupted run of it took. Then:
#   - `backup verify` of every finished backup must be clean (no chunk of a finished backup lost or damaged);
#   - every backup in the list must be one this script saw finish (a killed backup never appears half-made),
#     and after a finished gc no temporary file of a killed run older than a minute is left;
#   - the killed command, rerun, must succeed;
#   - every 50 rounds, every finished backup is restored and compared with the disk as it was backed up.
# It stops at the first failure and prints what broke; at the end it prints the rounds, kills and figures.
#
# Usage:  tests/soak/crash-loop.sh [ROUNDS]      (default 1000)
# Env:    LIVEMOUNT=PATH   the binary (default: the workspace's release build, built if missing)
#         SOAK_DIR=DIR     where the library and disks live (default: a new temporary folder, removed at the end)
set -euo pipefail

ROUNDS=${1:-1000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIVEMOUNT=${LIVEMOUNT:-}
if [[ -z $LIVEMOUNT ]]; then
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    LIVEMOUNT=$target/release/livemount
    [[ -x $LIVEMOUNT ]] || (cd "$ROOT" && cargo build --release -p appliance --bin livemount)
fi
DIR=${SOAK_DIR:-$(mktemp -d /var/tmp/livemount-soak.XXXXXX)}
[[ -n ${SOAK_DIR:-} ]] || trap 'rm -rf "$DIR"' EXIT
LIB=$DIR/library
DISKS=3
DISK_MIB=24

fail() { printf 'soak: FAILED in round %s: %s\n' "$round" "$*" >&2; exit 1; }
lm() { "$LIVEMOUNT" --library "$LIB" "$@"; }
now_ms() { date +%s%3N; }
rand_below() { python3 -c "import random,sys; print(random.randrange(int(sys.argv[1])))" "$1"; }

round=0
mkdir -p "$DIR/disks" "$DIR/expected"
lm library init --chunk-size 64K >/dev/null
for d in $(seq 0 $((DISKS - 1))); do
    # Each disk shares its first half with disk 0, so backups of different disks share chunks.
    head -c $((DISK_MIB / 2 << 20)) /dev/urandom > "$DIR/disks/$d.img"
    if (( d == 0 )); then cp "$DIR/disks/0.img" "$DIR/shared.half"; else
        cat "$DIR/shared.half" >> "$DIR/disks/$d.img"; fi
    truncate -s $((DISK_MIB << 20)) "$DIR/disks/$d.img"
done

# finished OUT: records a finished backup of $DIR/source.img (OUT: what `backup create --json` printed):
# the SHA-256 of what it backed up, under its id.
finished() {
    local id
    id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$1")
    finished_id "$id"
}
finished_id() { sha256sum < "$DIR/source.img" | cut -d' ' -f1 > "$DIR/expected/$1"; }

# A run killed after its backup was published (between the rename that makes it visible and the process's
# exit) made a whole backup: the one new backup in the list is recorded as finished, and is held to the same
# checks as every other (verify, and a restore compared with what was backed up).
adopt_published() {
    local listed id new=()
    listed=$(lm --json backup list | python3 -c 'import json,sys; [print(b["id"]) for b in json.load(sys.stdin)]')
    for id in $listed; do [[ -f $DIR/expected/$id ]] || new+=("$id"); done
    (( ${#new[@]} <= 1 )) || fail "one killed backup run left ${#new[@]} backups: ${new[*]}"
    if (( ${#new[@]} == 1 )); then finished_id "${new[0]}"; published_before_kill=$((published_before_kill + 1)); fi
}

# backup DISK: a backup of a disk to completion.
backup() {
    local disk=$1 out
    cp --reflink=auto "$DIR/disks/$disk.img" "$DIR/source.img"
    out=$(lm --json backup create "$DIR/source.img" --name "disk$disk") || fail "backup create of disk $disk: $out"
    finished "$out"
}

# timed CMD...: runs a command to completion and prints how long it took in ms.
timed() { local t0; t0=$(now_ms); "$@" >/dev/null; echo $(( $(now_ms) - t0 )); }

# How long each command takes uninterrupted: the kills fall anywhere in that time (and a little after).
cp --reflink=auto "$DIR/disks/0.img" "$DIR/source.img"
started=$(now_ms)
out=$(lm --json backup create "$DIR/source.img" --name disk0) || fail "backup create of disk 0: $out"
backup_ms=$(( $(now_ms) - started ))
finished "$out"
gc_ms=$(timed lm library gc)
kills=0 killed_mid=0 restores=0 published_before_kill=0

check_library() {
    local verify listed id
    verify=$(lm backup verify 2>&1) || fail "verify after a kill: $verify"
    listed=$(lm --json backup list | python3 -c 'import json,sys; [print(b["id"]) for b in json.load(sys.stdin)]')
    for id in $listed; do
        [[ -f $DIR/expected/$id ]] || fail "backup $id is listed but never finished"
    done
    for id in "$DIR"/expected/*; do
        id=$(basename "$id")
        grep -qx "$id" <<<"$listed" || fail "finished backup $id is no longer listed"
    done
}

restore_all() {
    local id
    for id in "$DIR"/expected/*; do
        id=$(basename "$id")
        rm -f "$DIR/restored.img"
        lm backup restore "$id" "$DIR/restored.img" >/dev/null || fail "restore of $id"
        [[ $(sha256sum < "$DIR/restored.img" | cut -d' ' -f1) == $(cat "$DIR/expected/$id") ]] \
            || fail "backup $id restored different bytes from those it backed up"
        restores=$((restores + 1))
    done
    rm -f "$DIR/restored.img"
}

for round in $(seq 1 "$ROUNDS"); do
    disk=$(rand_below $DISKS)
    at=$(rand_below $((DISK_MIB - 1)))
    head -c $((1 << 20)) /dev/urandom | dd of="$DIR/disks/$disk.img" bs=1M seek="$at" conv=notrunc status=none

    # The oldest backup is forgotten whenever more than six are kept (so gc has garbage to find, and the
    # restores every 50 rounds stay as many whatever the number of rounds).
    while (( $(ls "$DIR/expected" | wc -l) > 6 )); do
        oldest=$(lm --json backup list | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
        lm backup forget "$oldest" >/dev/null || fail "forget $oldest"
        rm -f "$DIR/expected/$oldest"
    done
    if (( $(rand_below 3) == 0 )); then
        what=gc
        budget=$gc_ms
        # Drawn before the command starts, so that the time it takes to draw is not part of the delay.
        delay=$(rand_below $((budget * 12 / 10 + 1)))
        # Started directly, not through `lm`: $! must be the process the kill is for, not a subshell.
        "$LIVEMOUNT" --library "$LIB" library gc >/dev/null 2>&1 &
    else
        what="backup of disk $disk"
        budget=$backup_ms
        delay=$(rand_below $((budget * 12 / 10 + 1)))
        cp --reflink=auto "$DIR/disks/$disk.img" "$DIR/source.img"
        "$LIVEMOUNT" --library "$LIB" --json backup create "$DIR/source.img" --name "disk$disk" >"$DIR/killed.out" 2>/dev/null &
    fi
    pid=$!
    sleep "$(echo "scale=3; $delay / 1000" | bc)"
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        killed_mid=$((killed_mid + 1))
    fi
    # A run that ended before the kill came is a finished backup like any other.
    if wait "$pid" 2>/dev/null; then
        [[ $what == gc ]] || finished "$(cat "$DIR/killed.out")"
    elif [[ $what != gc ]]; then
        adopt_published
    fi
    kills=$((kills + 1))

    check_library
    if [[ $what == gc ]]; then
        lm library gc >/dev/null || fail "gc rerun after a kill"
        leftover=$(find "$LIB/tmp" "$LIB/backups" "$LIB/packs" -maxdepth 1 -name '.tmp-*' -mmin +1 | wc -l)
        (( leftover == 0 )) || fail "$leftover temporary files of killed runs outlived a gc"
    else
        backup "$disk"
    fi
    if (( round % 50 == 0 )); then
        restore_all
        echo "soak: round $round: $killed_mid of $kills runs killed mid-way, $(ls "$DIR/expected" | wc -l) backups, $restores restores compared" >&2
    fi
done
restore_all
echo "soak: PASSED $ROUNDS rounds: $killed_mid of $kills runs (backup create and library gc) killed mid-way by SIGKILL ($published_before_kill backups killed after they were published, kept and checked); 0 broken backups, 0 lost chunks; $restores restores identical"
