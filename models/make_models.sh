#!/usr/bin/env bash
# Set up the pinned venv (.venv at the repo root, git-ignored) and rebuild every file in models/.
# Needs: python3.11, PyPI, and the Debian package dataset-fashion-mnist for make_data.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r models/requirements.txt
.venv/bin/pip install -q --no-deps -r models/requirements-nodeps.txt
[ -d /usr/share/datasets/fashion-mnist ] || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }
.venv/bin/python models/make_data.py
.venv/bin/python models/make_models.py
