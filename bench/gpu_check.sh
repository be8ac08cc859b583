#!/bin/bash
# One GPU session's measurements, in one command (device time is scarce):
# training tokens/s, peak memory and model FLOPs utilisation of a randomly initialised
# Qwen2.5-0.5B-shaped student, our loop vs transformers.Trainer; then chunked logit
# distillation's peak memory vs the full-logits form. Results go to $OUT (or ./gpu-results).
#
#   bash bench/gpu_check.sh            # on a machine with a GPU, torch/transformers/peft installed
# Missing pure-Python dependencies may be carried as wheels in .whl/ (installed to /tmp/site).
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
CONFIG=${CONFIG:-qwen2.5-0.5b}
PEAK=${PEAK_TFLOPS:-989}   # H100/H200 SXM dense bf16
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import sys, torch, transformers, peft, accelerate, pydantic; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'pydantic', pydantic.__version__)"
echo "== training throughput: batch 8 x 1024, 20 steps"
timeout 210 python3 bench/bench_training.py --config "$CONFIG" --device cuda --precision bf16 \
    --batch 8 --seq 1024 --steps 20 --peak-tflops "$PEAK" --chunk ${CHUNK:-1024}
echo "== logit distillation peak memory: batch 8 x 1024"
timeout 150 python3 bench/bench_logit_kd_memory.py --config "$CONFIG" --device cuda --precision bf16 \
    --batch 8 --seq 1024
echo "== training throughput: batch 16 x 1024, 20 steps"
timeout 150 python3 bench/bench_training.py --config "$CONFIG" --device cuda --precision bf16 \
    --batch 16 --seq 1024 --steps 20 --peak-tflops "$PEAK"
} 2>&1 | tee "$OUT/gpu_check.log"
