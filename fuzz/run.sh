#!/usr/bin/env bash
# Fuzzes configuration loading, body inspection (JSON and multipart) and the HTTP/1.1
# client's reading of answers (h1) with cargo-fuzz (libFuzzer), each target for SECONDS
# (default 300), starting from the kept corpus.
# Not run by CI.
#
#   fuzz/run.sh [SECONDS]
#
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain use them.
# The corpus is kept as corpus.tar.gz (unpacked here on first use, repacked at the end);
# a crash leaves its input in fuzz/artifacts/TARGET/ and makes this script fail.
set -euo pipefail
seconds="${1:-300}"
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[ -d corpus ] || tar xzf corpus.tar.gz
export RUSTC_BOOTSTRAP=1
for target in config body h1; do
    echo "fuzzing $target for ${seconds}s" >&2
    cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY)|Done" || true
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "crash inputs in fuzz/artifacts/$target" >&2
        exit 1
    fi
done
cargo fuzz cmin -O config corpus/config >/dev/null 2>&1
cargo fuzz cmin -O body corpus/body >/dev/null 2>&1
cargo fuzz cmin -O h1 corpus/h1 >/dev/null 2>&1
tar czf corpus.tar.gz corpus
echo "0 crashes; corpus kept in fuzz/corpus.tar.gz" >&2
