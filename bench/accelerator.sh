#!/usr/bin/env bash
# The step benchmark on an accelerator machine: 1B- and 7B-shaped random Llama models in bf16.
#   bash bench/accelerator.sh            # estimated 3-6 minutes on one H100/H200-class GPU (not yet run)
# It needs a Python with a CUDA build of torch. The script installs the project and its other
# dependencies into that Python. Set PYTHON to choose the interpreter. Output: bench/accelerator-<date>.txt.
# CI never runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run this on an accelerator machine")'
"$PYTHON" -m pip install --quiet -e ".[bench]"
out="bench/accelerator-$(date +%Y%m%d-%H%M).txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # seq 512, batch 8, 10 interleaved steps: estimated at about 1 minute per size after the random init.
  HF_HUB_OFFLINE=1 "$PYTHON" bench/bench_step.py --sizes 1b 7b --dtype bfloat16 --seq 512 --batch 8 --steps 10
  # The TRL comparison loads the model once per block, so it runs on the 1B shape only.
  HF_HUB_OFFLINE=1 "$PYTHON" bench/bench_step.py --sizes 1b --dtype bfloat16 --seq 512 --batch 8 --steps 3 \
    --trainers --trainer-rounds 2 --trainer-steps 6
} 2>&1 | tee "$out"
echo "wrote $out"
