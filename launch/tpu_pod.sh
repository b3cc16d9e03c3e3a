#!/usr/bin/env bash
# Run an rmr1 job on every host of a Cloud TPU pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE "rmr1 distill configs/distill/qwen2.5-7b-instruct.yaml model.hf_dir=..."
# The repository must be present at the same path on every host (e.g. a shared disk or a
# prior `git clone`); the first run installs the TPU extra there. JAX discovers the other
# hosts itself; every host runs the same command and checkpoints go to shared storage (gs://).
set -euo pipefail
TPU_NAME="$1"; ZONE="$2"; CMD="$3"
REPO="${RMR1_REPO_DIR:-\$HOME/rmr1_jax}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e; cd $REPO
  bash launch/setup.sh tpu
  . .venv/bin/activate
  $CMD"
