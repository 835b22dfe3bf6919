#!/usr/bin/env bash
# Installs what the tests need (idempotent) and runs every test of the workspace.
# Usage: scripts/test.sh            (as root on Debian 12; CI runs exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."

# Build artefacts live outside the clone so that CI and later runs reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/livemount/target}"
mkdir -p "$CARGO_TARGET_DIR"

scripts/install-deps.sh test --no-crates
# The crates the tests run (coldsnap) build beside the workspace: much of a cold build runs on one core
# (the AWS SDK's largest crates), so the two builds share the machine better than one after the other.
crates_log=$(mktemp)
scripts/install-deps.sh test-crates > "$crates_log" 2>&1 &
crates_pid=$!

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

# The habits CI keeps: formatted code and no clippy warnings, before anything runs.
cargo fmt --all -- --check || { echo "test.sh: run 'cargo fmt --all'" >&2; exit 1; }
cargo clippy --workspace --all-targets -q -- -D warnings

# One build of everything (tests need the livemount binary beside them), then the tests in parallel.
cargo build --workspace --all-targets
wait "$crates_pid" || { cat "$crates_log" >&2; echo "test.sh: installing the test crates failed" >&2; exit 1; }
cat "$crates_log"
cargo nextest run --workspace --no-fail-fast --failure-output final

# The local AWS stand-in (moto extended as AWS documents it) against boto3, and stock moto beside it.
python3 -m unittest discover -s tests/aws
