#!/usr/bin/env bash
# Installs the OpenAI SDKs that the end-to-end tests drive: openai-python into
# target/sdk-venv and openai-node into tests/sdk/node/node_modules.
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
