#!/usr/bin/env bash
# One-shot GPU benchmark: op and train-step timings of subsets_jax on the visible GPU.
# Usage (on a machine with an NVIDIA GPU and JAX's CUDA build, `pip install -e ".[cuda]"`):
#   OUT=results bash benchmarks/run_gpu.sh
# Writes op_gpu.json, train_step_gpu.json and nvidia-smi.txt into $OUT. PyTorch is skipped
# (the comparison target is the CPU reference); rerun `python -m benchmarks.bench_op` without --no_torch where a
# CUDA build of torch is installed to compare on the GPU too.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import jax; print(jax.devices())"
python -m benchmarks.bench_op --no_torch --repeats 20 --out "$OUT/op_gpu.json"
python -m benchmarks.bench_train_step --no_torch --steps 50 --out "$OUT/train_step_gpu.json"
