#!/usr/bin/env bash
# Every test: the Rust workspace's, then the Python package's (tests/python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
bash tests/python.sh
