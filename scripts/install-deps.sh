#!/usr/bin/env bash
# Installs the Debian packages livemount and its tests use, only those missing.
# Usage: scripts/install-deps.sh [run|test]
set -euo pipefail
what="${1:-run}"

# Tools the appliance itself runs: qemu-img/qemu-nbd (image formats), sfdisk and mkfs (sample images).
packages=(qemu-utils fdisk e2fsprogs)
if [ "$what" = test ]; then
    packages+=(xfsprogs)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
