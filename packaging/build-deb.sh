#!/usr/bin/env bash
# Builds the livemount Debian package and prints the path of the .deb.
#
#   packaging/build-deb.sh [--profile release|dev] [--no-build] [OUTDIR]
#
#   --profile release  (default) what users install: `cargo build --release` first (a cold build takes a
#                      quarter of an hour on 2 cores), xz at its usual level
#   --profile dev      the debug build the tests already made (CI cannot afford a release build), stripped
#                      and compressed fast; cargo-deb's warning that the dev profile is not for releases
#                      is expected
#   --no-build         package the binary that is in CARGO_TARGET_DIR as it is (the tests: the workspace
#                      build just made it, and `cargo build -p appliance` alone may resolve features
#                      differently and rebuild)
#   OUTDIR             where the .deb goes (default CARGO_TARGET_DIR/debian)
#
# What goes in besides the binary (appliance/Cargo.toml, [package.metadata.deb]): man pages and bash, zsh and
# fish completions that the binary writes itself (`livemount generate`), the open-iscsi packages the daemon
# installs into Debian 12 guests (fetched here with apt, kept in LIVEMOUNT_DEB_CACHE, default
# /var/cache/livemount/deb-build, so a rerun downloads only what changed), the default configuration
# packaging/livemount.toml, and the systemd unit and tmpfiles entry in systemd/.
#
# Needs cargo-deb (scripts/install-deps.sh test-crates installs the pinned version) and a Debian 12 host
# (the guest packages are the host's apt candidates).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=yes
outdir=
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
        --profile=*) profile=${1#--profile=}; shift ;;
        --no-build) build=no; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -*) echo "build-deb: unknown option $1" >&2; exit 2 ;;
        *) [[ -z $outdir ]] || { echo "build-deb: one OUTDIR only" >&2; exit 2; }; outdir=$1; shift ;;
    esac
done
case $profile in
    release) profile_dir=release ;;
    dev | debug) profile=dev; profile_dir=debug ;;
    *) echo "build-deb: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac

log() { echo "build-deb: $*" >&2; }

# The build lives outside the clone, as everywhere in this project; cargo-deb reads the same variable.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/livemount/target}"
outdir=${outdir:-$CARGO_TARGET_DIR/debian}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
cache=${LIVEMOUNT_DEB_CACHE:-/var/cache/livemount/deb-build}

cargo deb --version >/dev/null 2>&1 || {
    log "cargo-deb is missing: scripts/install-deps.sh test-crates (or cargo install --locked cargo-deb)"
    exit 1
}
# The guest packages go to debian-12/ in the package: they must be Debian 12's, which on this host means
# the host is Debian 12 (apt resolves them against its own sources).
# shellcheck disable=SC1091
if ! (. /etc/os-release && [[ ${ID:-} == debian && ${VERSION_ID:-} == 12 ]]); then
    log "the guest packages (open-iscsi for Debian 12 guests) are fetched with this host's apt: build on Debian 12"
    exit 1
fi

if [[ $build == yes ]]; then
    if [[ $profile == release ]]; then
        log "cargo build --release -p appliance"
        cargo build --locked --release -p appliance --bin livemount >&2
    else
        log "cargo build -p appliance"
        cargo build --locked -p appliance --bin livemount >&2
    fi
fi
bin=$CARGO_TARGET_DIR/$profile_dir/livemount
[[ -x $bin ]] || { log "$bin is missing: build it first, or leave out --no-build"; exit 1; }

# The package's version is the binary's (cargo-deb adds revision 1); Debian's changelog must have an entry
# for it, or dpkg and lintian take the package for something else.
version=$("$bin" --version | awk '{ print $2 }')
changelog_version=$(sed -n '1s/^livemount (\([^)]*\)).*/\1/p' packaging/debian/changelog)
[[ $changelog_version == "$version-1" ]] || {
    log "packaging/debian/changelog starts at $changelog_version, the binary is $version: add an entry for $version-1"
    exit 1
}

# Generated assets go under target/<profile>/deb-assets: cargo-deb maps the asset prefix target/release/ to
# the real target folder of the profile it packages, so one list in Cargo.toml serves both profiles.
assets=$CARGO_TARGET_DIR/$profile_dir/deb-assets
mkdir -p "$CARGO_TARGET_DIR/$profile_dir"
# Two builds at once (two test processes, a person and CI) would share that folder: one at a time.
exec 9>"$CARGO_TARGET_DIR/$profile_dir/.deb-assets.lock"
flock 9
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/guest-packages/debian-12"

log "man pages and completions from $bin"
"$bin" generate --man "$assets/man" --completions "$assets/completions" >&2
for f in livemount.1 livemount.bash _livemount livemount.fish; do
    [[ -s $assets/man/$f || -s $assets/completions/$f ]] || { log "livemount generate wrote no $f"; exit 1; }
done
# Debian policy: man pages gzip-compressed; -n leaves the time stamp out so rebuilds give the same bytes.
# (cargo-deb compresses man pages itself only when they are not under the target folder.)
gzip -9n "$assets"/man/*.1

log "guest packages (open-iscsi for Debian 12) in $cache"
mapfile -t debs < <(packaging/fetch-open-iscsi-debs.sh "$cache/guest-packages/debian-12")
[[ ${#debs[@]} -gt 0 ]] || { log "no guest packages were fetched"; exit 1; }
cp -- "${debs[@]}" "$assets/guest-packages/debian-12/"

# cargo-deb: --no-build since the binary is there (built above or by the caller), --strip since the
# profiles keep debug information (900 MB for the debug binary). For dev, --fast: xz at its usual level
# takes a minute on 2 cores for a binary that is thrown away after the test.
args=(deb -p appliance --locked --no-build --profile "$profile" --strip --output "$outdir")
[[ $profile == dev ]] && args+=(--fast)
log "cargo ${args[*]}"
# cargo-deb prints the path of the package on stdout; its warnings (the dev profile's) go to stderr.
deb=$(cargo "${args[@]}" | tail -n 1)
[[ -f $deb ]] || { log "cargo-deb printed no package path (got: $deb)"; exit 1; }
echo "$deb"
