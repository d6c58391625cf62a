#!/usr/bin/env bash
# The GPU throughput benchmark in one go (at most ~8 minutes): front end, EAT-base pretraining step and full-token
# ViT-B fine-tuning step in bf16, eager and torch.compile, the data pipeline with 2 workers; clips/s and MFU.
#
#   benchmarks/gpu_bench.sh [OUT_DIR] [gpu_bench.py options]     # OUT_DIR defaults to $OUT, else gpu_bench_out
#   benchmarks/gpu_bench.sh /tmp/smoke --cpu-smoke                # check the script on a CPU (tiny sizes)
#
# Needs only what a GPU image with PyTorch has: torch (CUDA), torchaudio, timm, lightning, torchmetrics, einops.
# Nothing is installed; the package is used from this checkout (PYTHONPATH). The data-pipeline figure also needs
# soundfile and webdataset (the section says "skipped" without them); to get it on a bare image, carry their wheels
# (pip download soundfile webdataset -d wheels/) and `pip install --no-index wheels/*.whl` before this script.
# Writes OUT_DIR/gpu_bench.json, OUT_DIR/gpu_bench.md (the table), OUT_DIR/gpu_bench.log and OUT_DIR/nvidia-smi.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-gpu_bench_out}
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    OUT_DIR=$1
    shift
fi
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
mkdir -p "$OUT_DIR"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT_DIR/nvidia-smi.txt"
"$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)"

# The Python side stops starting sections after --budget-s (420 s by default); the hard limit is 8 minutes.
timeout --signal=INT --kill-after=15 480 "$PYTHON" benchmarks/gpu_bench.py --out "$OUT_DIR" "$@" 2>&1 \
    | tee "$OUT_DIR/gpu_bench.log"
exit "${PIPESTATUS[0]}"
