#!/usr/bin/env bash
# The whole test suite, as README gives it: installs what the end-to-end tests need
# (openai-python in target/sdk-venv, openai-node in tests/sdk/node/node_modules), then
# runs every unit, integration and SDK test, and the benchmarks once each as tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-deps.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
