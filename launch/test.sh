#!/usr/bin/env bash
# Set up the environment and run the whole test suite on 8 simulated CPU devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh test
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Two workers (RMR1_TEST_WORKERS) by default, each file's tests on one worker: most of the
# suite's time is XLA compiles and subprocess start-ups, which two cores run side by side.
exec .venv/bin/python -m pytest -q -n "${RMR1_TEST_WORKERS:-2}" --dist loadfile "$@"
