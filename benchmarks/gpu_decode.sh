#!/usr/bin/env bash
# Greedy decode on an NVIDIA GPU: rmr1_jax's Sampler vs transformers `generate` (torch on CUDA,
# KV cache), float32 and bfloat16, with the HBM-bandwidth roofline of each step. One call:
#   bash benchmarks/gpu_decode.sh [OUT_DIR]
# 1) bench-100m (the CPU benchmark's model), batches 8 and 32, both dtypes, 5 repeats;
# 2) a random Qwen2.5-1.5B-shaped model in bfloat16, batches 8 and 32, 3 repeats, where a step
#    reads 3 GB of weights and the memory floor is no longer far below launch overheads.
# Logs and one JSON line per model go to OUT_DIR (default runs/gpu_decode).
set -o pipefail
out=${1:-${OUT:-runs/gpu_decode}}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}  # torch shares the GPU
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
$py - <<'PY' || exit 1
import jax, flax, torch, transformers
print(f"jax {jax.__version__} ({jax.default_backend()}: {jax.devices()}), flax {flax.__version__}, "
      f"torch {torch.__version__} (cuda {torch.cuda.is_available()}), transformers {transformers.__version__}")
assert jax.default_backend() == "gpu", "JAX sees no GPU"
PY
$py benchmarks/decode.py --json "$out/decode.jsonl" 2>&1 | tee "$out/decode_bench-100m.log"
rc=$?
timeout "${BIG_TIMEOUT:-330}" $py benchmarks/decode.py --preset qwen2.5-1.5b-instruct --no-f32 --repeats 3 \
    --json "$out/decode.jsonl" 2>&1 | tee "$out/decode_qwen2.5-1.5b.log"
exit $(( rc || $? ))
