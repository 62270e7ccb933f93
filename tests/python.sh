#!/usr/bin/env bash
# The Python package's tests: its wheel built from the workspace (maturin, the dev profile,
# sharing target/ with cargo test), installed in a fresh venv, then pytest on
# compiler/python/tests. The versions are pinned; PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=$PWD/target/python-tests/venv
rm -rf target/python-tests
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check maturin==1.16.0 numpy==2.4.6 pytest==9.2.0
"$venv/bin/maturin" build --quiet --locked -m compiler/python/Cargo.toml -o target/python-tests/wheels
"$venv/bin/pip" install --quiet --disable-pip-version-check target/python-tests/wheels/actc-*.whl
# The CLI the tests compare against.
cargo build --quiet --locked -p actc
# From outside the source tree, so `import actc` is the installed wheel.
cd target/python-tests
ACTC_BIN="$PWD/../debug/actc" "$venv/bin/python" -m pytest -q -p no:cacheprovider ../../compiler/python/tests
