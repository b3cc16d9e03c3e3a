#!/usr/bin/env bash
# Set up the environment and run the whole test suite on 8 simulated CPU devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh test
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
