#!/usr/bin/env bash
# One-shot GPU run: the op and train-step benchmarks (JAX against the seed's PyTorch code on
# the same GPU), the Pallas-variant experiment, then the relaxation's tests on the GPU.
# Usage (a machine with an NVIDIA GPU, JAX's CUDA build, and PyTorch with CUDA for the
# comparison; `pip install -e ".[cuda]"` gives JAX):
#   OUT=results bash benchmarks/run_gpu.sh            # NO_TORCH=1 to skip PyTorch
# Writes into $OUT: env.txt, op_gpu.json, train_step_gpu.json, variants_gpu.json,
# tests.txt (each test's outcome) and log.txt (everything printed). Each stage has its own
# time limit (T_OP, T_TRAIN, ...), so one that hangs does not lose the others.
# VARIANTS_ARGS=--no_pallas leaves the Pallas kernel out of the variant experiment.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU: JAX takes half its memory instead of 75 %.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
torch_args=(--torch_device cuda)
[[ -n "${NO_TORCH:-}" ]] && torch_args=(--no_torch)

{
  nvidia-smi
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stage() {  # stage SECONDS NAME COMMAND...: run with a time limit, log, keep going on failure
  local limit=$1 name=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $?, $((SECONDS - start)) s"
}

tests() {  # tests SECONDS NAME PYTEST_ARGS...: one line per outcome, appended to tests.txt
  local limit=$1 name=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$PY" -m pytest -v -p no:cacheprovider -o addopts="" "$@" >> "$OUT/tests.txt" 2>&1
  local rc=$?
  tail -2 "$OUT/tests.txt"
  echo "=== $name: exit $rc, $((SECONDS - start)) s"
}

{
  # The noise first: on CPU it takes a fused threefry path, which must stay off on a GPU.
  tests "${T_TESTS_NOISE:-60}" tests_noise tests/test_gumbel.py
  stage "${T_OP:-150}" op "$PY" -m benchmarks.bench_op "${torch_args[@]}" --repeats 30 \
    --out "$OUT/op_gpu.json"
  stage "${T_TRAIN:-150}" train_step "$PY" -m benchmarks.bench_train_step "${torch_args[@]}" \
    --steps 60 --out "$OUT/train_step_gpu.json"
  stage "${T_VARIANTS:-150}" variants "$PY" -m benchmarks.bench_gpu_variants --repeats 30 \
    ${VARIANTS_ARGS:-} --out "$OUT/variants_gpu.json"
  # The relaxation's tests that exercise the non-CPU code path's values and gradients, then
  # the dKNN loss, kNN and log-probability tests.
  tests "${T_TESTS:-100}" tests tests/test_relaxed_topk.py \
    -k "float64_reference_in_float32 or recompute_vjp or blocks or excluded or large_n_large_k"
  tests "${T_TESTS_MORE:-100}" tests_more tests/test_dknn.py tests/test_knn.py \
    tests/test_log_prob.py
} 2>&1 | tee "$OUT/log.txt"
