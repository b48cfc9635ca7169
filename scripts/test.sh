#!/usr/bin/env bash
# The whole test suite, as README gives it: installs what the end-to-end tests need
# (openai-python in target/sdk-venv, openai-node in tests/sdk/node/node_modules), then
# runs every unit, integration and SDK test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-deps.sh
cargo test --all-targets "$@"
