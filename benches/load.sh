#!/usr/bin/env bash
# The load benchmark: voxgate against nginx and HAProxy, each pinned to one core with one
# worker, driven by wrk from the other core; prints one table. See benches/README.md.
#
#   benches/load.sh
#
# Installs nginx, haproxy and wrk with apt-get when they are missing, builds the scripted
# upstream (examples/bench_upstream.rs) in release mode and voxgate as it is shipped
# (scripts/build-release.sh: profile-guided), then runs benches/load/run.py. Besides the
# plain contestants: voxgate with client keys and rate limits (small TTS), and voxgate's
# [cache] against nginx's proxy_cache (cache hits). Traffic stays on 127.0.0.1 (ports
# BENCH_PORT_BASE..+19, default 18400..18419). Every process started is ended on exit,
# failure included. About 8 to 10 minutes of measuring (two voxgate builds), plus the
# builds (about 9 minutes when nothing is cached).
#
# Knobs (environment): BENCH_RUNS (3), BENCH_SECONDS (5 per wrk run), BENCH_BIG_SECONDS (4),
# BENCH_PORT_BASE (18400), BENCH_PROXY_CORE (0), BENCH_LOAD_CORE (1), BENCH_VOXGATE_LOG
# (RUST_LOG for voxgate, default warn: no access log, as nginx and HAProxy run here),
# BENCH_BUILD (both: the profile-guided build as "voxgate" and the plain one as "voxgate B",
# measured side by side in every phase; pgo or plain for one of them),
# BENCH_PHASES (abcdefg: the phases to run, by letter; ag is small TTS and cache hits),
# BENCH_KEEP_WORKDIR=1 to keep the generated configs, bodies, logs and results.json,
# BENCH_CHARTS=DIR to draw the results as SVG bar charts there (benches/load/charts.py;
# benches/README.md embeds the ones in benches/charts/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "$(nproc)" -lt 2 ]; then
    echo "load.sh needs 2 cores (one for the proxy, one for the load); this machine has $(nproc)" >&2
    exit 1
fi

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v python3 >/dev/null || { echo "load.sh needs python3" >&2; exit 1; }

echo "building bench_upstream (release)" >&2
cargo build --release --quiet --example bench_upstream

target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

second=()
case "${BENCH_BUILD:-both}" in
    both)
        # The profile-guided build as "voxgate", the plain one as "voxgate B": both in
        # every phase of the same run, so that a regression of either shows beside the other.
        echo "building voxgate as it is shipped (scripts/build-release.sh, profile-guided)" >&2
        voxgate_bin="$("$root/scripts/build-release.sh" | tail -n 1)"
        echo "building voxgate B (cargo build --release)" >&2
        cargo build --release --quiet --bin voxgate
        second=(--voxgate-b "$target_dir/release/voxgate")
        ;;
    pgo)
        echo "building voxgate as it is shipped (scripts/build-release.sh, profile-guided)" >&2
        voxgate_bin="$("$root/scripts/build-release.sh" | tail -n 1)"
        ;;
    plain)
        echo "building voxgate (cargo build --release)" >&2
        cargo build --release --quiet --bin voxgate
        voxgate_bin="$target_dir/release/voxgate"
        ;;
    *)
        echo "BENCH_BUILD is both, pgo or plain, not ${BENCH_BUILD}" >&2
        exit 2
        ;;
esac

workdir="$(mktemp -d "${TMPDIR:-/tmp}/voxgate-bench.XXXXXX")"
export BENCH_PIDFILE="$workdir/pids"
: >"$BENCH_PIDFILE"

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # run.py ends what it started; this is for when it could not (killed, crashed).
    if [ -n "${runner:-}" ] && kill -0 "$runner" 2>/dev/null; then
        kill -TERM "$runner" 2>/dev/null || true
        wait "$runner" 2>/dev/null || true
    fi
    local pids
    pids="$(sort -u "$BENCH_PIDFILE" 2>/dev/null || true)"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        sleep 0.5
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP_WORKDIR:-0}" = 1 ]; then
        echo "kept $workdir" >&2
    else
        rm -rf "$workdir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

load_core="${BENCH_LOAD_CORE:-1}"
# The orchestrator and its clients sit on the load core; proxies are pinned by run.py.
taskset -c "$load_core" python3 "$root/benches/load/run.py" \
    --voxgate "$voxgate_bin" "${second[@]}" \
    --upstream "$target_dir/release/examples/bench_upstream" \
    --workdir "$workdir" &
runner=$!
wait "$runner"
