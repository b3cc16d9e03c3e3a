#!/usr/bin/env bash
# Set up the environment and run the main job, `rmr1 demo`, on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/rmr1 demo "$@"
