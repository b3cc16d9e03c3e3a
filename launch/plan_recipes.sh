#!/usr/bin/env bash
# Plan every RM-R1 and RAMO recipe on the slice the README names for it (ahead-of-time TPU
# compiles through libtpu: bash launch/setup.sh tpu), then print the tables of docs/plan-tables.md.
#   bash launch/plan_recipes.sh [OUT_DIR]          # default runs/plans
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/plans}"
mkdir -p "$OUT"
RMR1="${RMR1:-.venv/bin/rmr1}"
export JAX_PLATFORMS=cpu
plan() {  # NAME RECIPE TOPOLOGY [ARGS...]
  local name="$1"; shift
  echo "== $name: rmr1 plan $*" | tee "$OUT/$name.txt"
  "$RMR1" plan "$@" --json "$OUT/$name.json" >> "$OUT/$name.txt" 2>&1
  echo "exit $?" >> "$OUT/$name.txt"
  tail -2 "$OUT/$name.txt"
}
plan distill-7b configs/distill/qwen2.5-7b-instruct.yaml --topology v5p:2x2x2
plan distill-14b configs/distill/qwen2.5-14b-instruct.yaml --topology v5p:2x2x4
plan distill-32b configs/distill/qwen2.5-32b-instruct.yaml --topology v5p:2x4x4
plan grpo-7b configs/grpo/qwen2.5-7b-instruct.yaml --topology v5p:2x2x2
plan grpo-14b configs/grpo/qwen2.5-14b-instruct.yaml --topology v5p:2x2x4
plan grpo-32b configs/grpo/qwen2.5-32b-instruct.yaml --topology v5p:2x4x4
plan rm-llama3.1-8b configs/reward_model/ramo-skywork-llama3.1-8b.yaml --topology v6e:4x4
plan adapter-llama3.2-3b configs/rule_adapter/ramo-llama3.2-3b.yaml --topology v5e:2x4
# the too-small slice: exits non-zero with its suggestion
plan grpo-7b-small configs/grpo/qwen2.5-7b-instruct.yaml --topology v5e:2x2
# attention kernels at 12K tokens (Splash is the TPU default)
plan distill-7b-xla configs/distill/qwen2.5-7b-instruct.yaml --topology v5p:2x2x2 model.attention_impl=xla
# rematerialization policies, one row each
plan distill-7b-remat configs/distill/qwen2.5-7b-instruct.yaml --topology v5p:2x2x2 --remat all
# LoRA (rank 16 on every projection) against full fine-tuning
plan distill-7b-lora configs/distill/qwen2.5-7b-instruct.yaml --topology v5p:2x2x2 model.lora_rank=16
plan grpo-7b-lora configs/grpo/qwen2.5-7b-instruct.yaml --topology v5p:2x2x2 model.lora_rank=16
.venv/bin/python -m rmr1_jax.plan.tables "$OUT"
