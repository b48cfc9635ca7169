#!/usr/bin/env bash
# Installs what the tests need: the OpenAI SDKs the end-to-end tests drive (openai-python
# into target/sdk-venv, openai-node into tests/sdk/node/node_modules), voice-mode into
# target/voicemode-venv, and the Debian packages that voice-mode's audio libraries,
# voxgate's jemalloc build, tests/packaging.rs (systemd-analyze, from systemd) and
# tests/status_page.rs (a headless chromium, driven over its DevTools protocol) and
# tests/shared.rs (redis-server, which each test starts on a free port) need (apt-get, as
# root or through sudo).
# Idempotent: each step is skipped while its lock file is unchanged.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/target/sdk-venv"
requirements="$repo/tests/sdk/requirements.txt"
node_dir="$repo/tests/sdk/node"

# A copy of the requirements installed last, to tell when they changed.
stamp="$venv/installed-requirements.txt"
if [[ -f "$stamp" ]] && cmp -s "$requirements" "$stamp"; then
    echo "python: $venv is up to date"
else
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "python: creating $venv"
        python3 -m venv "$venv"
    fi
    echo "python: pip install -r tests/sdk/requirements.txt ($(grep '^openai==' "$requirements"))"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi

# npm writes node_modules/.package-lock.json on every install; it is older than
# package-lock.json when the lock changed since.
installed_lock="$node_dir/node_modules/.package-lock.json"
if [[ -f "$installed_lock" && ! "$node_dir/package-lock.json" -nt "$installed_lock" ]]; then
    echo "node: $node_dir/node_modules is up to date"
else
    echo "node: npm ci in $node_dir"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

# voice-mode, for tests/voice_mode.rs: its own venv (it brings its own openai and
# ~90 packages), the Debian libraries its audio dependencies load and build against.
vm_venv="$repo/target/voicemode-venv"
vm_requirements="$repo/tests/voicemode/requirements.txt"
vm_constraints="$repo/tests/voicemode/constraints.txt"
missing=()
# gcc and make also build jemalloc (tikv-jemalloc-sys), voxgate's allocator; systemd
# brings systemd-analyze, which checks packaging/systemd/voxgate.service; chromium loads
# the status page in tests/status_page.rs and scripts/screenshot-status.sh; redis-server
# backs tests/shared.rs (the tests start their own; the Debian service may stay stopped).
for pkg in libportaudio2 libasound2-dev gcc make systemd chromium redis-server; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "apt: installing ${missing[*]}"
    apt_get=(apt-get)
    [[ $(id -u) -eq 0 ]] || apt_get=(sudo apt-get)
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "${missing[@]}" >/dev/null
fi
vm_stamp="$vm_venv/installed-requirements.txt"
if [[ -f "$vm_stamp" ]] && cat "$vm_requirements" "$vm_constraints" | cmp -s - "$vm_stamp"; then
    echo "voice-mode: $vm_venv is up to date"
else
    [[ -x "$vm_venv/bin/python" ]] || python3 -m venv "$vm_venv"
    echo "voice-mode: pip install $(grep '^voice-mode' "$vm_requirements")"
    "$vm_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$vm_requirements" -c "$vm_constraints"
    cat "$vm_requirements" "$vm_constraints" > "$vm_stamp"
fi
