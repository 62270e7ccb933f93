#!/usr/bin/env bash
# Every test: the Rust workspace's, the runtime's build without tract (a device's), then the
# Python package's (tests/python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
out=$(cargo test -p actc-runtime --no-default-features --locked --lib prefix::absent 2>&1) ||
  { echo "$out"; exit 1; }
grep -q "test result: ok. 1 passed" <<<"$out" ||
  { echo "$out"; echo "the tract-free runtime's test did not run"; exit 1; }
echo "the runtime without tract: its test passed"
bash tests/python.sh
