#!/usr/bin/env bash
# Create .venv and install vistok with its test extras (CPU torch on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and bounded: an unbounded requirement resolves to a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch>=2.4,<=2.13"
.venv/bin/python -m pip install -q -e ".[test]"
