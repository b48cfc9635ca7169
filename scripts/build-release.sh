#!/usr/bin/env bash
# Builds voxgate for production: a profile-guided (PGO) release build.
#
#   scripts/build-release.sh          # prints the binary's path: target/pgo/release/voxgate
#
# 1. A release build instrumented to count what runs (-Cprofile-generate).
# 2. The mixed workload of tests/workload.rs run through it: speech (plain, streamed, with
#    rewrites, with fallbacks), transcriptions and translations (64 KiB, 1 MiB and spilled
#    6 MiB files), malformed requests and model lists, against scripted engines on
#    127.0.0.1, every answer checked. VOXGATE_WORKLOAD_SCALE (default 10) multiplies its request counts.
# 3. The counts merged with llvm-profdata (rustup's llvm-tools, added if missing: it must
#    come from the same toolchain as rustc).
# 4. The release build that uses them (-Cprofile-use): hot code laid out together, inlining
#    and branch layout chosen from real counts. benches/README.md has what it changes.
#
# Three release builds (fat LTO): about 10 minutes on 2 cores. Needs Rust through rustup.
# RUSTFLAGS from the environment are kept.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$root/target/pgo"

host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    echo "adding rustup's llvm-tools (for llvm-profdata)" >&2
    rustup component add llvm-tools >&2
fi

rm -rf "$work/profiles" "$work/voxgate.profdata"
mkdir -p "$work/profiles"

echo "1/4 instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/profiles" \
    cargo build --release --quiet --bin voxgate --target-dir "$work/instrumented" >&2

echo "2/4 training workload (tests/workload.rs)" >&2
VOXGATE_BIN="$work/instrumented/release/voxgate" \
    VOXGATE_WORKLOAD_SCALE="${VOXGATE_WORKLOAD_SCALE:-10}" \
    cargo test --quiet --test workload >&2

echo "3/4 merging the profiles" >&2
if ! ls "$work/profiles"/*.profraw >/dev/null 2>&1; then
    echo "the workload left no profile in $work/profiles" >&2
    exit 1
fi
"$profdata" merge -o "$work/voxgate.profdata" "$work/profiles"

echo "4/4 optimised build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/voxgate.profdata" \
    cargo build --release --quiet --bin voxgate --target-dir "$work" >&2

echo "$work/release/voxgate"
