#!/usr/bin/env bash
# Run an rmr1 job as N local processes (CPU, gloo collectives over loopback): the way to try
# multi-host code paths on one machine.
#   launch/multiprocess_cpu.sh 2 distill configs/distill/tiny.yaml train.run_dir=runs/mp
set -euo pipefail
cd "$(dirname "$0")/.."
N="$1"; shift
PORT="${RMR1_PORT:-12355}"
export RMR1_COORDINATOR="127.0.0.1:$PORT" RMR1_NUM_PROCESSES="$N" JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4}"
pids=()
for ((i = 0; i < N; i++)); do
  RMR1_PROCESS_ID=$i .venv/bin/rmr1 "$@" > "mp-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
echo "logs: mp-*.log"
exit $status
