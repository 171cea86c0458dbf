#!/usr/bin/env bash
# Runs every Spillway test from a fresh clone, installing what the tests need by itself:
#   1. formatting and lints (cargo fmt --check, cargo clippy -D warnings);
#   2. the example and hostile WASM plugins (transforms/build.sh), which the tests load;
#   3. Rust unit, property and end-to-end tests (cargo test: the log, the endpoint, the kill -9 crash
#      test, drain, compression, the CLI and every example config);
#   4. the client tests: unmodified boto3 and AWS CLI against the daemon, from a Python venv with
#      pinned packages (tests/clients/requirements.txt) created in .venv on first run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== WASM plugins (transforms/build.sh: Debian clang + wasi-libc, installed when missing)"
transforms/build.sh
echo "== cargo test"
cargo test --locked

echo "== Python client tests (boto3, AWS CLI)"
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
SPILLWAY_BIN="$PWD/target/debug/spillway" "$venv/bin/python" -m pytest -q tests/clients
