#!/usr/bin/env bash
# Set up the environment and run the whole test suite on 8 simulated CPU devices.
#
# Environment:
#   RMR1_TEST_WORKERS    pytest-xdist workers (default 2), each test file on one worker.
#   RMR1_TEST_XLA_CACHE  JAX's persistent compilation cache for the run (default
#                        .cache/xla-tests under the repo, gitignored). The xdist workers and every
#                        subprocess they start (CLI runs, multi-process jobs) read and write it, so
#                        a program that several tests or processes compile the same way is compiled
#                        once. It is kept between runs (capped at 2 GB, least recently used evicted
#                        first); delete the folder for a cold run, or set the variable empty to run
#                        without a cache. A cached program is the same executable, so results do not
#                        change (the bit-identical resume tests pass with it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh test
export XLA_FLAGS="--xla_force_host_platform_device_count=8 ${XLA_FLAGS:-}"
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cache="${RMR1_TEST_XLA_CACHE-$PWD/.cache/xla-tests}"
if [ -n "$cache" ]; then
  mkdir -p "$cache"
  export JAX_COMPILATION_CACHE_DIR="$(cd "$cache" && pwd)"  # absolute: subprocesses run elsewhere
  export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.1 JAX_COMPILATION_CACHE_MAX_SIZE=2000000000
fi
# Two workers by default: most of the suite's time is XLA compiles and subprocess start-ups,
# which two cores run side by side. tests/conftest.py starts the slowest files first.
exec .venv/bin/python -m pytest -q -n "${RMR1_TEST_WORKERS:-2}" --dist loadfile "$@"
