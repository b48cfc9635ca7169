#!/usr/bin/env bash
# Soak: voxgate under steady load for MINUTES (default 10) at about half its measured
# maximum rate, with the primary upstream killed and restarted every minute. Not run by CI.
#
#   benches/soak.sh [MINUTES]
#
# Prints, per minute: requests, non-2xx answers, socket errors, voxgate RSS and open file
# descriptors; then the drift of RSS and descriptors from the first minute to the last.
# Errors are expected only in the seconds around each kill (requests in flight to the
# primary when it dies are cut: the client sees a broken response, never a clean short
# one). Everything runs on 127.0.0.1; every process started is ended on exit.
set -euo pipefail

minutes="${1:-10}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v wrk >/dev/null; then
    echo "installing wrk with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet --bin voxgate --example bench_upstream
bin="$root/target/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/voxgate-soak.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "${primary:-}" ] && kill "$primary" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

port_a=18500 port_b=18501 port_v=18502
start_primary() {
    "$bin/examples/bench_upstream" "127.0.0.1:$port_a" >"$work/a.log" 2>&1 &
    primary=$!
}
start_primary
"$bin/examples/bench_upstream" "127.0.0.1:$port_b" >"$work/b.log" 2>&1 &
pids+=($!)
cat >"$work/voxgate.toml" <<EOF
[server]
listen = "127.0.0.1:$port_v"
[upstreams.primary]
url = "http://127.0.0.1:$port_a"
health = { interval = "1s", timeout = "500ms", rise = 2, fall = 2 }
[upstreams.fallback]
url = "http://127.0.0.1:$port_b"
[[routes]]
to = ["primary", "fallback"]
EOF
RUST_LOG=warn "$bin/voxgate" --config "$work/voxgate.toml" >"$work/voxgate.log" 2>&1 &
voxgate=$!
pids+=("$voxgate")
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port_v/health" >/dev/null 2>&1 && break
    sleep 0.1
done

body='{"model":"tts-1","input":"Hello from the soak test.","voice":"af_sky","response_format":"pcm"}'
lua() { # $1: per-request delay in ms (0: none)
    cat <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
function delay() return $1 end
EOF
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$voxgate/status"; }
fds() { ls "/proc/$voxgate/fd" | wc -l; }
requests() { awk '/requests in/ {print $1}' "$1"; }
non2xx() { awk '/Non-2xx/ {print $5}' "$1" | grep . || echo 0; }
sockerr() { awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$1" | grep . || echo 0; }

lua 0 >"$work/max.lua"
taskset -c 1 wrk -t1 -c32 -d5s -s "$work/max.lua" "http://127.0.0.1:$port_v/v1/audio/speech" >"$work/max.txt"
max_rps="$(awk '/Requests\/sec/ {print int($2)}' "$work/max.txt")"
target=$((max_rps / 2))
conns=32
delay=$((conns * 1000 / (target > 0 ? target : 1)))
lua "$delay" >"$work/soak.lua"
echo "maximum ${max_rps} req/s; soaking at about ${target} req/s (${conns} connections, ${delay} ms apart) for ${minutes} min" >&2

printf "%-6s %10s %8s %8s %10s %6s\n" minute requests non2xx sockerr rss_kib fds
first_rss="" first_fds=""
for minute in $(seq "$minutes"); do
    taskset -c 1 wrk -t1 -c"$conns" -d60s -s "$work/soak.lua" \
        "http://127.0.0.1:$port_v/v1/audio/speech" >"$work/m$minute.txt" &
    load=$!
    sleep 20
    kill "$primary" 2>/dev/null || true # fault: the primary dies…
    wait "$primary" 2>/dev/null || true
    sleep 15
    start_primary # …and comes back
    wait "$load"
    r="$(rss)" f="$(fds)"
    [ -z "$first_rss" ] && first_rss="$r" first_fds="$f"
    printf "%-6s %10s %8s %8s %10s %6s\n" "$minute" "$(requests "$work/m$minute.txt")" \
        "$(non2xx "$work/m$minute.txt")" "$(sockerr "$work/m$minute.txt")" "$r" "$f"
done
sleep 2 # let the last connections close
echo "RSS: ${first_rss} KiB after minute 1, $(rss) KiB at the end ($(awk -v a="$first_rss" -v b="$(rss)" 'BEGIN {printf "%+.1f", (b - a) * 100 / a}') %)"
echo "open descriptors: ${first_fds} after minute 1, $(fds) at the end"
