#!/usr/bin/env bash
# Instructions per small TTS request (the "What changed" table in benches/README.md):
# voxgate under callgrind, pinned to one core, serving keep-alive small speech POSTs (the
# load bench's body; 32 KiB answers from the scripted upstream, examples/bench_upstream.rs).
#
#   benches/callgrind.sh
#
# Builds voxgate (a plain `cargo build --release`, not profile-guided) and the upstream from
# the tree this script is in (CARGO_TARGET_DIR as cargo reads it); installs valgrind with
# apt-get when it is missing. voxgate runs with the load bench's config (load/voxgate.toml.in,
# RUST_LOG=warn). One connection, kept alive: WARMUP requests, `callgrind_control --dump`
# (start-up and warm-up to a file of their own, counters back to zero), REQUESTS requests, a
# second dump: per request = its Ir / REQUESTS (vgdb, behind callgrind_control, needs
# ptrace). Repeats within about 0.5 %, far closer on an idle host: some work follows the
# clock (jemalloc's tcache GC, tokio's timer), and a busy host makes requests slower. Its
# figures run about 5 % above the README table's (lost script): compare trees with it alone.
# Loopback only, free ports; every process started is ended on exit, failure included.
# 3 to 12 s of callgrind after the builds.
#
# Knobs (environment): CALLGRIND_WARMUP (300), CALLGRIND_REQUESTS (2000), BENCH_PROXY_CORE
# (0), BENCH_LOAD_CORE (1), BENCH_VOXGATE_LOG (warn), BENCH_KEEP_WORKDIR=1 (keep the files),
# CALLGRIND_POLICY=keys (the config gets load/keys.toml.in's two clients with keys and
# limits, and global limits, none ever refusing; the client presents the second key: what
# checking keys and limits costs a request).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
warmup="${CALLGRIND_WARMUP:-300}"
requests="${CALLGRIND_REQUESTS:-2000}"
proxy_core="${BENCH_PROXY_CORE:-0}"
load_core="${BENCH_LOAD_CORE:-1}"
[ "$(nproc)" -lt 2 ] && load_core="$proxy_core"

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
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
    { kill -TERM $upstream $voxgate; sleep 0.5; kill -KILL $upstream $voxgate; } 2>/dev/null || true
    if [ "${BENCH_KEEP_WORKDIR:-0}" = 1 ]; then echo "kept $workdir" >&2; else rm -rf "$workdir"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The upstream picks its own free ports (the answering one and the always-503 one).
taskset -c "$load_core" "$target_dir/release/examples/bench_upstream" 127.0.0.1:0 127.0.0.1:0 \
    >"$workdir/upstream.out" &
upstream=$!
for _ in $(seq 100); do [ "$(wc -l <"$workdir/upstream.out")" -ge 2 ] && break; sleep 0.05; done
upstream_port="$(sed -n 's|^listening http://127.0.0.1:||p' "$workdir/upstream.out")"
upstream_503_port="$(sed -n 's|^listening-503 http://127.0.0.1:||p' "$workdir/upstream.out")"
[ -n "$upstream_port" ] && [ -n "$upstream_503_port" ] || { echo "bench_upstream did not start" >&2; exit 1; }

# voxgate's port and the dead upstream's: free a moment ago.
read -r port dead_port < <(python3 -c 'import socket; s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
python3 -c 'import string, sys; print(string.Template(open(sys.argv[1]).read()).substitute(
    port=sys.argv[2], upstream_port=sys.argv[3], upstream_503_port=sys.argv[4], dead_port=sys.argv[5]))' \
    benches/load/voxgate.toml.in "$port" "$upstream_port" "$upstream_503_port" "$dead_port" \
    >"$workdir/voxgate.toml"
client_key=""
case "${CALLGRIND_POLICY:-}" in
    "") ;;
    keys)
        cat benches/load/keys.toml.in >>"$workdir/voxgate.toml"
        client_key="$(sed -n 's/^key = "\(.*\)"$/\1/p' benches/load/keys.toml.in | tail -n 1)"
        ;;
    *) echo "CALLGRIND_POLICY is keys or empty, not ${CALLGRIND_POLICY}" >&2; exit 2 ;;
esac

start=$SECONDS
out="$workdir/callgrind.out"
RUST_LOG="${BENCH_VOXGATE_LOG:-warn}" taskset -c "$proxy_core" valgrind --tool=callgrind \
    --callgrind-out-file="$out" "$target_dir/release/voxgate" --config "$workdir/voxgate.toml" \
    >"$workdir/voxgate.log" 2>&1 &
voxgate=$!
# The client connects once voxgate listens (a refused connect costs voxgate nothing), and
# dumps the counts when voxgate has had 0.2 s to finish the last request and wait again.
taskset -c "$load_core" python3 - "$port" "$voxgate" "$warmup" "$requests" "$client_key" <<'EOF' \
    || { cat "$workdir/voxgate.log" >&2; exit 1; }
import json, socket, subprocess, sys, time
port, pid, warmup, requests = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
auth = f"Authorization: Bearer {sys.argv[5]}\r\n" if sys.argv[5] else ""
body = json.dumps({"model": "tts-1", "input": "Hello from the benchmark.", "voice": "alloy",
                   "response_format": "pcm"}).encode()
raw = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
       f"Content-Type: application/json\r\n{auth}Content-Length: {len(body)}\r\n\r\n").encode() + body
for _ in range(1200):  # 60 s
    try: s = socket.create_connection(("127.0.0.1", port), timeout=60); break
    except OSError: time.sleep(0.05)
else: sys.exit("voxgate did not listen within 60 s")
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
def recv_until(done):
    global buf
    while not done():
        part = s.recv(262144)
        buf += part if part else sys.exit("voxgate closed the connection")
def batch(n):
    global buf
    for _ in range(n):
        s.sendall(raw)
        recv_until(lambda: b"\r\n\r\n" in buf)
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split()[1] != "200" or f"content-length: {32 * 1024}" not in map(str.lower, lines):
            sys.exit(f"unexpected answer: {lines}")
        recv_until(lambda: len(buf) >= 32 * 1024)
        buf = buf[32 * 1024:]
    time.sleep(0.2)
    done = subprocess.run(["callgrind_control", "--dump", pid], capture_output=True, text=True)
    done.returncode == 0 or sys.exit(f"callgrind_control failed: {done.stdout}{done.stderr}")
batch(warmup)
batch(requests)
EOF
kill -TERM "$voxgate"  # a clean exit, which writes the shutdown's counts too
for _ in $(seq 600); do kill -0 "$voxgate" 2>/dev/null || break; sleep 0.1; done
kill -0 "$voxgate" 2>/dev/null && { echo "voxgate did not exit within 60 s" >&2; exit 1; }
wait "$voxgate" || true
voxgate=""

ir() { sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$1"; }
before="$(ir "$out.1")" measured="$(ir "$out.2")" after="$(ir "$out")"
[ -n "$measured" ] || { echo "no callgrind totals in $out.2" >&2; exit 1; }
echo "total Ir: $measured over $requests measured requests (start-up and $warmup warm-up: $before; shutdown: $after; $((SECONDS - start)) s)"
echo "instructions per small TTS request: $(( (measured + requests / 2) / requests ))"
