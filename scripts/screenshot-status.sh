#!/usr/bin/env bash
# Takes a screenshot of the status page, for a person to look at.
#
#   scripts/screenshot-status.sh [OUT.png] [CONFIG.toml]
#
# Without a config it makes a demonstration: three upstreams on 127.0.0.1 (one that answers,
# one that answers 503, one where nothing listens), routes over them, and a few dozen
# requests sent through voxgate so the charts and the error list have something to show.
# With a config, it serves that one (it must set `server.admin_listen`) and sends nothing.
# Chromium (Debian's `chromium`) and target/sdk-venv come from scripts/install-test-deps.sh.
# Writes OUT.png (default target/status-page.png); fails if the page logged a console error.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${1:-$repo/target/status-page.png}")"
config="${2:-}"
python="$repo/target/sdk-venv/bin/python"
[[ -x "$python" ]] || { echo "missing $python: run scripts/install-test-deps.sh" >&2; exit 1; }

cargo build --quiet --manifest-path "$repo/Cargo.toml" --bin voxgate
voxgate="$repo/target/debug/voxgate"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A scripted upstream: 200 with a little audio, or always STATUS.
upstream() {
    "$python" - "$1" "$2" <<'EOF' &
import http.server, sys
port, status = int(sys.argv[1]), int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"data": []}' if self.path.startswith("/v1/models") else b"ID3 audio"
        if status != 200:
            body = b'{"error": {"message": "busy", "type": "server_error"}}'
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
EOF
    pids+=($!)
}

admin_port=""
if [[ -z "$config" ]]; then
    api_port=$(free_port) admin_port=$(free_port)
    local_port=$(free_port) busy_port=$(free_port) dead_port=$(free_port)
    upstream "$local_port" 200
    upstream "$busy_port" 503
    config="$work/demo.toml"
    cat > "$config" <<EOF
[server]
listen = "127.0.0.1:$api_port"
admin_listen = "127.0.0.1:$admin_port"

[upstreams.local]
url = "http://127.0.0.1:$local_port"
health = { interval = "1s" }

[upstreams.busy]
url = "http://127.0.0.1:$busy_port"
health = { enabled = false }
eject_after = 1000

[upstreams.gone]
url = "http://127.0.0.1:$dead_port"
health = { interval = "1s" }

[[routes]]
match = { model = "tts-busy" }
to = ["busy", "local"]

[[routes]]
match = { model = "tts-gone" }
to = ["gone"]

[[routes]]
to = ["gone", "local"]
EOF
else
    admin_port=$(sed -n 's/^admin_listen *= *"[^"]*:\([0-9]*\)".*/\1/p' "$config" | head -1)
    [[ -n "$admin_port" ]] || { echo "$config sets no server.admin_listen" >&2; exit 1; }
fi

"$voxgate" --config "$config" > "$work/voxgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$admin_port/health" > /dev/null && break
    sleep 0.1
done

if [[ -n "${api_port:-}" ]]; then
    # Bounded: 240 requests over about fifteen seconds, while the page watches.
    (
        for i in $(seq 60); do
            for model in tts-1 tts-1 tts-busy tts-gone; do
                curl -s -o /dev/null "http://127.0.0.1:$api_port/v1/audio/speech" \
                    -H 'content-type: application/json' \
                    -d "{\"model\": \"$model\", \"input\": \"hello $i\", \"voice\": \"alloy\"}" || true
            done
            sleep 0.25
        done
    ) &
    pids+=($!)
fi

mkdir -p "$(dirname "$out")"
# In the demonstration the page watches the requests go through for 14 s.
watch=0
[[ -n "${api_port:-}" ]] && watch=14
"$python" "$repo/tests/sdk/status_page.py" shot "http://127.0.0.1:$admin_port/ui" "$out" "$watch"
echo "wrote $out"
