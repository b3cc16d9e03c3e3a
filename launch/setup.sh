#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at .venv and install rmr1_jax into it.
#   bash launch/setup.sh            # runtime dependencies
#   bash launch/setup.sh test       # plus pytest, transformers, the torch CPU build and libtpu
#   bash launch/setup.sh tpu        # plus jax[tpu] (libtpu)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$EXTRA" = "test" ]; then
  # The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # the tpu extra (libtpu) lets the tests compile for TPU slices ahead of time (rmr1 plan)
  .venv/bin/python -m pip install -q -e ".[test,tpu]"
elif [ -n "$EXTRA" ]; then
  .venv/bin/python -m pip install -q -e ".[$EXTRA]"
else
  .venv/bin/python -m pip install -q -e .
fi
