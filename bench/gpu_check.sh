#!/usr/bin/env bash
# The first-night check on one GPU machine, in one command of at most ten minutes:
#   bash bench/gpu_check.sh [WHEEL_DIR]
# A lent GPU machine has its own python3 with torch, Triton, numpy, pyarrow, tiktoken and
# nvidia-ml-py but not the rest of this project's dependencies, and no internet: give it the
# missing ones as wheels (WHEEL_DIR, e.g. .whl) and they are installed into a scratch folder
# first. Everything else is bench/gpu_check.py; see its docstring for the steps and figures.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${1:-}" ]; then
  PYTHON=.venv/bin/python  # a development checkout: its own environment has everything
fi
if [ -n "${1:-}" ]; then
  site="${TMPDIR:-/tmp}/gpu-check-site"
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$1"/*.whl; then
    echo "gpu_check: installing the wheels in $1 failed; nothing was checked." >&2
    exit 2
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" bench/gpu_check.py
