#!/usr/bin/env bash
# One-shot GPU run: the library's tests that exercise the non-CPU code paths, then the op,
# noise, exact-quantity, estimator and train-step benchmarks (JAX against the reference PyTorch code on the same GPU).
# Usage, on a machine with an NVIDIA GPU (`pip install -e ".[test,cuda]"`, and PyTorch with
# CUDA for the comparison; NO_TORCH=1 skips it):
#   OUT=gpu-run bash benchmarks/run_gpu.sh
# Writes into $OUT: env.txt, tests.txt (each test's outcome), op_gpu.json, exact_gpu.json,
# estimators_gpu.json, train_step_gpu.json and log.txt (everything printed). Each stage has
# its own time limit (T_TESTS, T_OP, T_NOISE, T_EXACT, T_EST, T_TRAIN seconds), so one that
# hangs does not lose the others; their defaults sum to under ten minutes. STAGES names the
# stages to run (default: all six) and TEST_FILES the test files of the first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-run}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU: JAX takes half its memory instead of 75 %.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
torch_args=(--torch_device cuda)
[[ -n "${NO_TORCH:-}" ]] && torch_args=(--no_torch)

{
  nvidia-smi
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

STAGES="${STAGES:-tests op noise exact estimators train_step}"
stage() {  # stage SECONDS NAME COMMAND...: run with a time limit, log, keep going on failure
  local limit=$1 name=$2
  shift 2
  [[ " $STAGES " == *" $name "* ]] || { echo "=== $name: skipped (not in STAGES)"; return; }
  echo "=== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $?, $((SECONDS - start)) s"
}

# The tests compile hundreds of small programs: with pytest-xdist, several workers compile
# at once, each allocating GPU memory as it needs it.
xdist=()
if "$PY" -c "import xdist" 2>/dev/null; then
  xdist=(-n "${TEST_WORKERS:-8}")
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi

{
  stage "${T_TESTS:-200}" tests "$PY" -m pytest -q -p no:cacheprovider -p no:benchmark -o addopts="" -rA \
    "${xdist[@]}" ${TEST_FILES:-tests/test_relaxed_topk.py tests/test_gumbel.py \
    tests/test_dknn.py tests/test_knn.py tests/test_compile_once.py} -k "not notebook" \
    > "$OUT/tests.txt" 2>&1
  [[ -f "$OUT/tests.txt" ]] && tail -3 "$OUT/tests.txt"
  unset XLA_PYTHON_CLIENT_PREALLOCATE
  stage "${T_OP:-100}" op "$PY" -m benchmarks.bench_op "${torch_args[@]}" --rounds 2 \
    --repeats 30 --out "$OUT/op_gpu.json"
  stage "${T_NOISE:-30}" noise "$PY" -m benchmarks.bench_noise
  stage "${T_EXACT:-100}" exact "$PY" -m benchmarks.bench_exact --repeats 3 \
    --sizes "${EXACT_SIZES:-1000,10000,100000}" --out "$OUT/exact_gpu.json"
  stage "${T_EST:-70}" estimators "$PY" -m benchmarks.bench_estimators --repeats 9 \
    --out "$OUT/estimators_gpu.json"
  stage "${T_TRAIN:-80}" train_step "$PY" -m benchmarks.bench_train_step "${torch_args[@]}" \
    --steps 60 --out "$OUT/train_step_gpu.json"
} 2>&1 | tee "$OUT/log.txt"
