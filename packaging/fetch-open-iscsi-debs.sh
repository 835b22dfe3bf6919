#!/bin/bash
# Download the .deb files that open-iscsi needs in a Debian 12 guest, for an offline install later
# (dpkg -i DIR/*.deb inside the guest's root, then update-initramfs -u). The daemon does that for guests
# that lack the initiator (`serve --guest-packages`, which holds debian-12/); the Debian package ships the
# result (packaging/build-deb.sh) and the boot tests fetch it for their own daemons
# (tests/fixtures/fetch-open-iscsi-debs.sh runs this script).
#
#   packaging/fetch-open-iscsi-debs.sh DIR                       # the fixed list for make-guest-image.sh's image
#   packaging/fetch-open-iscsi-debs.sh DIR --guest-image IMG     # resolved against that image's packages
#   packaging/fetch-open-iscsi-debs.sh DIR --guest-status FILE   # resolved against a guest's /var/lib/dpkg/status
#
# Runs on a Debian 12 host with the default sources (bookworm, bookworm-updates, bookworm-security), with
# `apt-get download`, so the packages are the host's candidates (the same release as the guest).
#
# Incremental: a file already in DIR with the size and SHA256 the archive gives is kept, and other versions
# of the same packages are removed from DIR, so a rerun downloads only what changed (a security update)
# and DIR never holds two versions of a package. Prints the paths of the package files, one a line.
#
# For the image that make-guest-image.sh builds, open-iscsi's Depends that are missing are libopeniscsiusr
# and libisns0 (debconf, init-system-helpers, libc6, libkmod2, libmount1, libssl3, libsystemd0 and udev are
# there already); its Recommends busybox (used by initramfs-tools when present) and libisns0's Recommends
# netbase are fetched too. Recommends `finalrd` has no package in bookworm.
set -euo pipefail

usage() { echo "usage: $0 DIR [--guest-image IMG | --guest-status FILE]" >&2; exit 2; }
DIR=${1:-}
[[ -n $DIR ]] || usage
shift
GUEST_IMAGE=
GUEST_STATUS=
while [[ $# -gt 0 ]]; do
    case $1 in
        --guest-image) GUEST_IMAGE=${2:?}; shift 2 ;;
        --guest-status) GUEST_STATUS=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done

# The packages the image of make-guest-image.sh lacks (checked with the resolution below).
FIXED=(open-iscsi libopeniscsiusr libisns0 busybox netbase)

WORK=$(mktemp -d /tmp/fetch-open-iscsi.XXXXXX)
chmod 755 "$WORK"
LOOP=
cleanup() {
    set +e
    mountpoint -q "$WORK/root" && umount "$WORK/root"
    [[ -n $LOOP ]] && losetup -d "$LOOP"
    rm -rf "$WORK"
}
trap cleanup EXIT

# apt needs its package lists; a fresh host may not have them yet.
if ! apt-cache show open-iscsi >/dev/null 2>&1; then
    apt-get update -q >&2
fi

if [[ -n $GUEST_IMAGE ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "$0: --guest-image needs root (loop device)" >&2; exit 1; }
    LOOP=$(losetup -f --show -P -r "$GUEST_IMAGE")
    [[ -b ${LOOP}p1 ]] || partx -a "$LOOP" 2>/dev/null || true
    mkdir "$WORK/root"
    mount -o ro "${LOOP}p1" "$WORK/root"
    cp "$WORK/root/var/lib/dpkg/status" "$WORK/status"
    umount "$WORK/root"
    losetup -d "$LOOP"
    LOOP=
    GUEST_STATUS=$WORK/status
fi

if [[ -n $GUEST_STATUS ]]; then
    # Resolve open-iscsi (with Recommends) as if apt ran inside the guest: the guest's installed set, the
    # host's package lists. Each line of --print-uris is: 'URI' FILE SIZE HASH; the name is the file's first field.
    mapfile -t PKGS < <(apt-get -o Dir::State::status="$GUEST_STATUS" install --print-uris -qq open-iscsi \
        | awk '{ f = $2; sub(/_.*/, "", f); print f }')
else
    PKGS=("${FIXED[@]}")
fi
[[ ${#PKGS[@]} -gt 0 ]] || { echo "$0: nothing to download (open-iscsi already installed?)" >&2; exit 0; }

mkdir -p -- "$DIR"
DIR=$(cd -- "$DIR" && pwd)
echo "fetch-open-iscsi-debs: ${PKGS[*]}" >&2

# What the archive has now: one line a package, 'URI' FILE SIZE HASH (no download yet).
mapfile -t URIS < <(apt-get download --print-uris -qq "${PKGS[@]}")
[[ ${#URIS[@]} -eq ${#PKGS[@]} ]] || {
    echo "$0: apt knows ${#URIS[@]} of the ${#PKGS[@]} packages ${PKGS[*]}: run apt-get update" >&2
    exit 1
}
WANT_FILES=()
MISSING=()
for line in "${URIS[@]}"; do
    read -r _ file size hash <<<"$line"
    name=${file%%_*}
    WANT_FILES+=("$file")
    have=$DIR/$file
    if [[ -f $have && $(stat -c %s -- "$have") == "$size" ]] \
        && { [[ $hash != SHA256:* ]] || [[ $(sha256sum -- "$have" | cut -d' ' -f1) == "${hash#SHA256:}" ]]; }; then
        continue
    fi
    MISSING+=("$name")
done

if [[ ${#MISSING[@]} -gt 0 ]]; then
    # apt-get download writes into the current folder; as root it drops privileges to _apt, which must be
    # able to write there, so download in a world-writable temporary folder and move the files.
    mkdir "$WORK/dl"
    chmod 1777 "$WORK/dl"
    (cd "$WORK/dl" && apt-get download -q "${MISSING[@]}" >&2)
    mv -f "$WORK"/dl/*.deb "$DIR"/
else
    echo "fetch-open-iscsi-debs: all in $DIR already" >&2
fi

# Older versions of these packages left from an earlier run would be installed beside the new ones.
for file in "${WANT_FILES[@]}"; do
    for other in "$DIR/${file%%_*}"_*.deb; do
        [[ -e $other && $other != "$DIR/$file" ]] && rm -f -- "$other"
    done
done
for file in "${WANT_FILES[@]}"; do
    [[ -f $DIR/$file ]] || { echo "$0: $file was not downloaded" >&2; exit 1; }
    echo "$DIR/$file"
done
