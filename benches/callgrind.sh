#!/usr/bin/env bash
# Instructions per small TTS request: voxgate under callgrind, pinned to one core, serving
# keep-alive small speech POSTs (the load bench's body and 32 KiB answer) from the scripted
# upstream (examples/bench_upstream.rs). See benches/README.md ("What changed").
#
#   benches/callgrind.sh
#
# Builds voxgate with a plain `cargo build --release` (not profile-guided) and the bench
# upstream, from the tree this script is in (CARGO_TARGET_DIR is honoured, as cargo does),
# installs valgrind with apt-get when it is missing, then starts voxgate under
# `valgrind --tool=callgrind` twice with the load bench's config (benches/load/voxgate.toml.in,
# RUST_LOG=warn): one run serves WARMUP requests, the other WARMUP + REQUESTS, all on one
# keep-alive connection. Per request = (total Ir of the long run - total Ir of the short)
# / REQUESTS: start-up, warm-up and shutdown cancel out, and no callgrind_control (ptrace)
# is needed. Counts repeat within about 0.5 %. Traffic stays on 127.0.0.1 (free ports);
# every process started is ended on exit, failure included. About a minute per run of both
# after the builds.
#
# Knobs (environment): CALLGRIND_WARMUP (300), CALLGRIND_REQUESTS (2000),
# BENCH_PROXY_CORE (0), BENCH_LOAD_CORE (1), BENCH_VOXGATE_LOG (warn),
# BENCH_KEEP_WORKDIR=1 to keep the config, logs and callgrind.out files.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
warmup="${CALLGRIND_WARMUP:-300}"
requests="${CALLGRIND_REQUESTS:-2000}"
proxy_core="${BENCH_PROXY_CORE:-0}"
load_core="${BENCH_LOAD_CORE:-1}"
[ "$(nproc)" -lt 2 ] && load_core="$proxy_core"

if ! command -v valgrind >/dev/null; then
    echo "installing valgrind with apt-get" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
command -v python3 >/dev/null || { echo "callgrind.sh needs python3" >&2; exit 1; }

echo "building voxgate (cargo build --release) and bench_upstream" >&2
cargo build --release --quiet --bin voxgate
cargo build --release --quiet --example bench_upstream
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

workdir="$(mktemp -d "${TMPDIR:-/tmp}/voxgate-callgrind.XXXXXX")"
upstream="" voxgate=""  # pids of what runs now (a reaped pid is forgotten)
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # shellcheck disable=SC2086
    if [ -n "$upstream$voxgate" ]; then
        kill -TERM $upstream $voxgate 2>/dev/null || true
        sleep 0.5
        kill -KILL $upstream $voxgate 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP_WORKDIR:-0}" = 1 ]; then echo "kept $workdir" >&2; else rm -rf "$workdir"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The upstream picks its own free ports (the plain one and the always-503 one).
taskset -c "$load_core" "$target_dir/release/examples/bench_upstream" 127.0.0.1:0 127.0.0.1:0 \
    >"$workdir/upstream.out" &
upstream=$!
for _ in $(seq 100); do [ "$(wc -l <"$workdir/upstream.out")" -ge 2 ] && break; sleep 0.05; done
upstream_port="$(sed -n 's|^listening http://127.0.0.1:||p' "$workdir/upstream.out")"
upstream_503_port="$(sed -n 's|^listening-503 http://127.0.0.1:||p' "$workdir/upstream.out")"
[ -n "$upstream_port" ] && [ -n "$upstream_503_port" ] || { echo "bench_upstream did not start" >&2; exit 1; }

# voxgate's port and the dead upstream's: free now, nothing else of ours takes them.
read -r port dead_port < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]; print(*[x.getsockname()[1] for x in s])')
python3 - "$root/benches/load/voxgate.toml.in" "$workdir/voxgate.toml" <<EOF
import string, sys
text = string.Template(open(sys.argv[1]).read()).substitute(port=$port,
    upstream_port=$upstream_port, upstream_503_port=$upstream_503_port, dead_port=$dead_port)
open(sys.argv[2], "w").write(text)
EOF

# One voxgate under callgrind serving $1 requests on one keep-alive connection; its total
# Ir in $total. The client connects once voxgate listens (refused connects cost voxgate nothing).
run() {
    local n=$1 out="$workdir/callgrind.out.$1"
    RUST_LOG="${BENCH_VOXGATE_LOG:-warn}" taskset -c "$proxy_core" valgrind --tool=callgrind \
        --callgrind-out-file="$out" "$target_dir/release/voxgate" --config "$workdir/voxgate.toml" \
        >"$workdir/voxgate.$n.log" 2>&1 &
    voxgate=$!
    taskset -c "$load_core" python3 - "$port" "$n" <<'EOF' || { cat "$workdir/voxgate.$n.log" >&2; exit 1; }
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
body = json.dumps({"model": "tts-1", "input": "Hello from the benchmark.", "voice": "alloy",
                   "response_format": "pcm"}).encode()
raw = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
       f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
deadline = time.monotonic() + 120
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60); break
    except OSError:
        if time.monotonic() > deadline: sys.exit("voxgate did not listen within 120 s")
        time.sleep(0.05)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
for i in range(n):
    s.sendall(raw)
    while b"\r\n\r\n" not in buf:
        part = s.recv(65536)
        if not part: sys.exit(f"connection closed at request {i}")
        buf += part
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = [int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")]
    if lines[0].split()[1] != "200" or length != [32 * 1024]:
        sys.exit(f"request {i}: {lines[0]} {length}")
    while len(buf) < length[0]:
        part = s.recv(65536)
        if not part: sys.exit(f"connection closed in answer {i}")
        buf += part
    buf = buf[length[0]:]
s.close()
EOF
    kill -TERM "$voxgate"  # a clean exit, so that callgrind writes its counts
    for _ in $(seq 600); do kill -0 "$voxgate" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$voxgate" 2>/dev/null && { echo "voxgate did not exit within 60 s" >&2; exit 1; }
    wait "$voxgate" || true
    voxgate=""
    total="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out")"
    [ -n "$total" ] || { echo "no callgrind totals in $out" >&2; cat "$workdir/voxgate.$n.log" >&2; exit 1; }
}

start=$SECONDS
run "$warmup"
short=$total
run $((warmup + requests))
long=$total
echo "total Ir: $short for $warmup requests, $long for $((warmup + requests)) ($((SECONDS - start)) s)"
echo "instructions per small TTS request: $(( (long - short) / requests ))"
