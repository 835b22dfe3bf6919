//! Adding the iSCSI login to a guest's initramfs without rebuilding it, and without reading it.
//!
//! A rebuild (`update-initramfs`) reads every kernel module the image holds from the guest's disk (on a live
//! mount: recalled from the backup), packs and compresses them all again: measured on a Debian 12 guest,
//! 26 s and 220 MiB recalled of the 27 s a first boot preparation took. The kernel unpacks an initramfs made
//! of several archives one after another, later files replacing earlier ones, so the existing image is kept
//! as it is and archives are appended to it.
//!
//! What is appended is everything of a rebuild except the kernel modules the image already has: the guest's
//! own `mkinitramfs` builds it with `MODULES=list` (no module directory is added wholesale, so none of those
//! modules is read), running every hook as a rebuild does (open-iscsi's among them, with the modules the
//! hooks ask for) into memory, and compresses it as the guest is configured to. Its module index would only
//! know the modules of that build, so a second archive after it holds the guest's own index
//! (`/lib/modules/<version>/modules.*`, the one the image was built from). That index names every module of
//! the kernel, so it answers for every module of the old image and of the new archive alike, with the same
//! dependencies: `mkinitramfs` resolves the modules it copies through that very index (`modprobe
//! --show-depends`), so an image holds every dependency and soft dependency of each of its modules; a module
//! the index names but the image lacks is not found, as it would not be with an index of the image alone. The
//! image keeps every storage driver it had, so the guest still boots from a local disk.
//!
//! The old image is not read at all (unpacking it read its 37 MiB: a third of all a first preparation
//! recalled). Where the guest's modules are compressed the image holds them decompressed, under other names
//! than the guest's index gives; then the image is unpacked into memory instead, and the hooks, `depmod` and
//! `ldconfig` run over it (`EXTEND_UNPACKED`).

use super::chroot::Chroot;
use super::GuestError;

/// Folder of the work, in the chroot's /var/tmp (memory: see `Chroot::enter`).
const WORK: &str = "/var/tmp/livemount-initramfs";

/// Exit status of `EXTEND` when the guest's module index cannot stand for the image's, or when the build
/// cannot be set up as it needs (no folder of configuration hooks, no mount namespace).
const NOT_APPLICABLE: i32 = 3;

/// Run by `sh` in the guest: `$1` the kernel version, `$2` its initramfs image, `$3` the work folder.
/// Prints the size of what it appended.
const EXTEND: &str = r#"
set -e
umask 0022
version=$1 image=$2 work=$3
modules=/lib/modules/$version
conf_hooks=/usr/share/initramfs-tools/conf-hooks.d
rm -rf "$work"
mkdir -p "$work"
# The guest's index must exist and name the modules as the image holds them (decompressed, .ko); the
# setting below needs the folder of configuration hooks and a mount namespace of its own.
if [ ! -f "$modules/modules.dep" ] || [ ! -f "$modules/modules.dep.bin" ] || [ ! -d "$conf_hooks" ] \
        || grep -q '\.ko\.' "$modules/modules.dep" || ! unshare --mount true; then
    exit 3
fi
# MODULES=list, in a copy of the configuration hooks that only this mkinitramfs sees (a private mount
# namespace): they are sourced after every configuration file and never copied into the image.
cp -a "$conf_hooks" "$work/conf-hooks.d"
echo MODULES=list > "$work/conf-hooks.d/zzzz-livemount-no-module-dirs"
# Kept (-k): the early archive, so that it can be left out below, and the build's tree.
TMPDIR=$work unshare --mount --propagation private sh -c 'mount --bind "$1" "$2" && exec mkinitramfs -k -o "$3" "$4"' \
    sh "$work/conf-hooks.d" "$conf_hooks" "$work/built" "$version" >&2
for early in "$work"/mkinitramfs-FW_*; do :; done
for destdir in "$work"/mkinitramfs_*; do :; done
if [ ! -f "$early" ] || [ ! -d "$destdir" ]; then
    echo "mkinitramfs left no build in $work" >&2
    exit 1
fi
# What it built after the early archive (CPU microcode): only the first archive of an image may be one,
# and the image keeps its own.
tail -c +$(($(wc -c < "$early") + 1)) "$work/built" > "$work/extra"
# Then the guest's module index, at the path the image has it, replacing the one of this build's modules
# only (mkinitramfs drops the *map files depmod may write).
index=$(cd "$destdir$modules" && pwd -P)
index=${index#"$destdir"/}
mkdir -p "$work/index/$index"
for f in "$modules"/modules.*; do
    case "$f" in
    *map) ;;
    *) cp -p "$f" "$work/index/$index/" ;;
    esac
done
(cd "$work/index" && find . -type f | LC_ALL=C sort | cpio --quiet -R 0:0 -o -H newc | gzip -n) >> "$work/extra"
cat "$work/extra" >> "$image"
wc -c < "$work/extra"
rm -rf "$work"
"#;

/// The fallback of `EXTEND`, with the same arguments and output: the image is unpacked (`unmkinitramfs`)
/// into memory, the hooks run over that tree (a hook copies only what is not there yet, so it reads only
/// what is new), then `depmod` and `ldconfig` run over the whole tree, and what changed since the unpacking
/// is packed. Follows the guest's `mkinitramfs` step by step for what it re-creates (hook environment,
/// scripts, run order, module decompression, depmod, ldconfig).
const EXTEND_UNPACKED: &str = r#"
set -e
umask 0022
version=$1 image=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
unmkinitramfs "$image" "$work/image"
DESTDIR="$work/image"
# An image with early archives (CPU microcode) is unpacked into early*/ and main/; those are left as they are.
[ -d "$DESTDIR/main" ] && DESTDIR="$DESTDIR/main"
if [ ! -e "$DESTDIR/init" ] || [ ! -d "$DESTDIR/scripts" ]; then
    echo "$image is not an initramfs-tools image" >&2
    exit 3
fi
# Everything created or changed after this mark goes into the appended archive (the pause: file times
# on tmpfs move in clock ticks of a few milliseconds).
touch "$work/unpacked"
sleep 0.05

MODULESDIR="/lib/modules/$version"
CONFDIR=/etc/initramfs-tools
verbose=n
DPKG_ARCH=$(dpkg --print-architecture)
KEYMAP=n MODULES=most BUSYBOX=auto RESUME= FSTYPE=
. "$CONFDIR/initramfs.conf"
for conf in "$CONFDIR"/conf.d/*; do
    if [ -f "$conf" ]; then . "$conf"; fi
done
# Archives a hook would prepend or append: the image already carries those of its build.
__TMPEARLYCPIO="$work/early.cpio"
__TMPCPIOGZ="$work/more.cpio.gz"
export MODULESDIR version CONFDIR DESTDIR DPKG_ARCH verbose KEYMAP MODULES BUSYBOX RESUME FSTYPE
export __TMPEARLYCPIO __TMPCPIOGZ
. /usr/share/initramfs-tools/hook-functions

# The boot scripts, as a rebuild copies them (open-iscsi's among them).
for from in /usr/share/initramfs-tools/scripts "$CONFDIR/scripts"; do
    [ -d "$from" ] || continue
    for b in $(cd "$from" && find . -maxdepth 2 -name '.?*' -prune -o \
            -regextype posix-extended -regex '.*/[[:alnum:]\._-]+$' -type f -print); do
        mkdir -p "$DESTDIR/scripts/$(dirname "$b")"
        cp -p "$from/$b" "$DESTDIR/scripts/$(dirname "$b")/"
    done
done
cp -p "$CONFDIR/initramfs.conf" "$DESTDIR/conf"

run_scripts /usr/share/initramfs-tools/hooks
run_scripts "$CONFDIR/hooks"
# (they end with `set +e`)
set -e

for b in $(cd "$DESTDIR/scripts" && find . -mindepth 1 -type d); do
    cache_run_scripts "$DESTDIR" "/scripts/${b#./}"
done
find "$DESTDIR/$MODULESDIR" -cnewer "$work/unpacked" \( -name '*.ko.xz' -o -name '*.ko.zst' \) | while read -r ko; do
    case "$ko" in
    *.xz) xz -d "$ko" ;;
    *.zst) zstd -q -d --rm "$ko" ;;
    esac
done
depmod -a -b "$DESTDIR" "$version"
rm -f "$DESTDIR/lib/modules/$version"/modules.*map
cp -pPr /etc/ld.so.conf* "$DESTDIR/etc/"
ldconfig -r "$DESTDIR"
rm -f "$DESTDIR/var/cache/ldconfig/aux-cache"

cd "$DESTDIR"
find . -cnewer "$work/unpacked" | LC_ALL=C sort | cpio --quiet -R 0:0 -o -H newc | gzip -n -9 > "$work/extra.cpio.gz"
cat "$work/extra.cpio.gz" >> "$image"
wc -c < "$work/extra.cpio.gz"
cd /
rm -rf "$work"
"#;

/// Appends to the initramfs of kernel `version` what a rebuild would add to it. Returns the bytes appended.
/// On an error the image is as it was, unless the append itself failed: rebuilding it then repairs it.
pub fn extend(chroot: &Chroot, version: &str) -> Result<u64, GuestError> {
    let image = format!("/boot/initrd.img-{version}");
    let out = match chroot.run_unless(NOT_APPLICABLE, &["sh", "-c", EXTEND, "sh", version, &image, WORK])? {
        Some(out) => out,
        None => chroot.run(&["sh", "-c", EXTEND_UNPACKED, "sh", version, &image, WORK])?,
    };
    let appended = out.lines().last().and_then(|l| l.trim().parse().ok());
    appended.ok_or_else(|| GuestError::Command {
        command: format!("extend {image}"),
        status: "no size printed".into(),
        stderr: out.chars().rev().take(200).collect::<String>().chars().rev().collect(),
    })
}
