#!/usr/bin/env bash
# Prints the Debian archive this machine installs bookworm from, as its own apt sources configure it, so that
# debootstrap and backports use the machine's mirror and no host name is written into the project.
# Usage: scripts/debian-mirror.sh        (exit 1, with what to do, when no such source is configured)
set -eu   # no pipefail: the first line is all we want, an early close of a pipe is fine

# The archive this machine already installs bookworm from (its own mirror, as its apt sources say), so that
# backports come from the same place: deb822 `.sources` files first, then one-line `sources.list` entries.
debian_archive() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             /(^|\n)Suites:[^\n]*[[:space:]]bookworm([[:space:]]|$)/ && /(^|\n)Types:[^\n]*deb([[:space:]]|$)/ {
                 for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { sub(/^URIs:[[:space:]]*/, "", $i); split($i, u, " "); print u[1]; exit }
             }' "$f"
    done | head -n 1 | grep . && return 0
    grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i + 1) == "bookworm") { print $i; exit } break } }' \
        | head -n 1 | grep .
}

debian_archive || {
    echo "debian-mirror: no apt source for Debian bookworm in /etc/apt/sources.list or /etc/apt/sources.list.d:" \
         "add one, or set the mirror by hand (GUEST_MIRROR, BENCH_MIRROR)" >&2
    exit 1
}
