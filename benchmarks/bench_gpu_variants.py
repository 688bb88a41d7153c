"""GPU experiment: the relaxed top-k's XLA forward variants against a Pallas (Triton) kernel.

  python -m benchmarks.bench_gpu_variants [--repeats 30] [--out results.json]

On the default (non-CPU) path the library runs all rows as one block. Per case this
times the noise-free forward on `(scores - row max) / tau` rows:
  xla          the library's non-CPU forward: no `lax.cond`, scan unrolled by <= 16 steps
  xla_cond     the CPU's step options: runner-up reduction under `lax.cond` (on a GPU a
               host round trip per step), rolled scan (the non-CPU default until run 2)
  xla_eager    the runner-up always reduced, rolled scan
  xla_shifted  the CPU's form (`_block_forward_cpu`: e = exp(b - m) carried between steps,
               one exp and two reductions a step; `lax.cond`s on tau and on dominant rows)
  pallas_*     benchmarks/pallas_forward.py, one program per row (chunk, warps)
and forward+backward (`sum(w * soft_topk(scores))`, value and gradient):
  lib_fwd_bwd          the library (`vjp="recompute"`; off CPU: the backward replays without
                       optimisation barriers)
  autodiff_fwd_bwd     `vjp="autodiff"` (scan autodiff; stores k states)
  cpu_options_fwd_bwd  xla_cond's forward, the analytic backward with barriers (the CPU's
                       way; the non-CPU default until run 2)
  barrier_fwd_bwd      xla's forward, the backward with barriers
  pallas_fwd_bwd       the Pallas forward, the library's backward
  shifted_fwd_bwd      xla_shifted's forward, the backward replaying its p, no barriers
then the compiled temporary memory of each at k = 8 and 256. Each variant's values are
checked against the library's before timing. Meant for a GPU; on CPU use `--interpret`
to smoke-test. Run 2 (results/variants_gpu2.json) used other names: xla there is xla_cond
here, xla_unroll there is xla here; eager_unroll_nobarrier there is lib here,
eager_unroll there is barrier here, lib there is cpu_options here.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import subsets_jax as sj
from benchmarks import pallas_forward
from benchmarks.common import compiled_temp_bytes, median_times, write_results
from subsets_jax._src import relaxed_topk

CASES = [(100, 1000, 9), (100, 10000, 9), (100, 60000, 9), (16, 100000, 64)]
SMOKE_CASES = [(4, 300, 5)]
TAU = 1.0
PALLAS_CONFIGS = [(4096, 16), (8192, 32)]  # (chunk, num_warps)


def xla_forward(k, **options):
  return jax.jit(
    lambda b: relaxed_topk._forward_rows(b, jnp.float32(TAU), k, blocked=False, **options)[0]
  )


def composed_fwd_bwd(k, forward_rows, **replay_options):
  """value_and_grad of sum(w * soft_topk) from `forward_rows(b) -> (total, aux)` and the
  library's analytic backward (`_backward_rows` with `replay_options`) on its scalars."""

  @jax.custom_vjp
  def total(b):
    return forward_rows(b)[0]

  def fwd(b):
    out, aux = forward_rows(b)
    return out, (b, aux)

  def bwd(res, total_bar):
    b, aux = res
    b_bar, _ = relaxed_topk._backward_rows(
      b, total_bar, aux, jnp.float32(TAU), k, blocked=False, **replay_options
    )
    return (b_bar,)

  total.defvjp(fwd, bwd)
  loss = lambda s, w: jnp.sum(w * total(pallas_forward.scaled_rows(s, TAU)))
  return jax.jit(jax.value_and_grad(loss))


def xla_rows(k, **step_options):
  return lambda b: relaxed_topk._forward_rows(b, jnp.float32(TAU), k, blocked=False, **step_options)


def fwd_bwd_variants(k, interpret, pallas_config):
  """Forward+backward variants, each `(scores, w) -> (loss, grad)`."""
  chunk, warps = pallas_config or (None, None)
  soft = lambda vjp: jax.jit(
    jax.value_and_grad(lambda s, w: jnp.sum(w * sj.soft_topk(s, k, TAU, vjp=vjp)))
  )
  pallas_rows = functools.partial(
    pallas_forward.forward_rows, tau=TAU, k=k, chunk=chunk, num_warps=warps, interpret=interpret
  )
  variants = {
    "lib_fwd_bwd": soft("recompute"),
    "autodiff_fwd_bwd": soft("autodiff"),
    "cpu_options_fwd_bwd": composed_fwd_bwd(
      k, xla_rows(k, lazy_runner_up=True, unroll=1), materialize=True
    ),
    "barrier_fwd_bwd": composed_fwd_bwd(k, xla_rows(k), materialize=True),
    "shifted_fwd_bwd": composed_fwd_bwd(
      k, xla_rows(k, shifted=True), shifted=True, materialize=False
    ),
  }
  if pallas_config is not None:
    variants["pallas_fwd_bwd"] = composed_fwd_bwd(k, pallas_rows, materialize=False)
  return variants


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU smoke test)")
  p.add_argument("--no_pallas", action="store_true", help="leave the Pallas kernel out")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  cases = SMOKE_CASES if args.interpret else CASES
  configs = PALLAS_CONFIGS[:1] if args.interpret else PALLAS_CONFIGS
  configs = [] if args.no_pallas else configs
  results = {
    "machine": f"{platform.node()} ({jax.devices()[0]})",
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "cases": [],
  }
  print(f"device {jax.devices()[0]}, jax {jax.__version__}; times in ms (median)")
  rng = np.random.default_rng(0)
  for b_, n, k in cases:
    scores = jnp.asarray(rng.gumbel(size=(b_, n)).astype(np.float32) + 2 * rng.normal(size=(b_, n)))
    w = jnp.asarray(rng.normal(size=(b_, n)).astype(np.float32))
    b = jax.block_until_ready(pallas_forward.scaled_rows(scores, TAU))
    fwd = {
      "xla": xla_forward(k),
      "xla_cond": xla_forward(k, lazy_runner_up=True, unroll=1),
      "xla_eager": xla_forward(k, lazy_runner_up=False, unroll=1),
      "xla_shifted": xla_forward(k, shifted=True),
    }
    for chunk, warps in configs:
      fwd[f"pallas_c{chunk}_w{warps}"] = functools.partial(
        pallas_forward.forward_rows,
        tau=TAU,
        k=k,
        chunk=chunk,
        num_warps=warps,
        interpret=args.interpret,
      )
    fwd_bwd = fwd_bwd_variants(
      k, args.interpret, configs[min(1, len(configs) - 1)] if configs else None
    )
    row = {"B": b_, "N": n, "k": k, "errors": {}, "max_abs_diff": {}}
    reference = np.asarray(fwd["xla"](b))
    ref_grad = np.asarray(fwd_bwd["lib_fwd_bwd"](scores, w)[1])
    timed = {}
    for name, fn in fwd.items():
      try:
        out = fn(b)
        out = out[0] if isinstance(out, tuple) else out
        row["max_abs_diff"][name] = float(np.abs(np.asarray(out) - reference).max())
        timed[name] = lambda fn=fn: jax.block_until_ready(fn(b))
      except Exception as e:  # a failing variant must not lose the others' figures
        row["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        traceback.print_exc()
    for name, fn in fwd_bwd.items():
      try:
        grad = np.asarray(fn(scores, w)[1])
        row["max_abs_diff"][name] = float(np.abs(grad - ref_grad).max())
        timed[name] = lambda fn=fn: jax.block_until_ready(fn(scores, w))
      except Exception as e:
        row["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
        traceback.print_exc()
    row["times_s"] = median_times(timed, args.repeats, warmup=2)
    results["cases"].append(row)
    line = " ".join(f"{name} {t * 1e3:.3f}" for name, t in row["times_s"].items())
    diffs = max(row["max_abs_diff"].values())
    print(f"({b_}, {n}, {k}): {line}; max|diff| {diffs:.1e}; errors {list(row['errors'])}")
  # Memory of the backward variants as k grows (compiled temporary bytes).
  b_, n = (4, 300) if args.interpret else (100, 10000)
  spec = jax.ShapeDtypeStruct((b_, n), jnp.float32)
  results["temp_mb"] = {}
  for k in (8, 256):
    for name, fn in fwd_bwd_variants(k, args.interpret, configs[0] if configs else None).items():
      try:
        results["temp_mb"][f"{name}_k{k}"] = compiled_temp_bytes(fn, spec, spec) / 2**20
      except Exception as e:
        results["temp_mb"][f"{name}_k{k}"] = f"{type(e).__name__}"
  print(
    f"compiled temporary MB, ({b_}, {n}):",
    {name: (round(v, 1) if isinstance(v, float) else v) for name, v in results["temp_mb"].items()},
  )
  write_results(args.out, results)


if __name__ == "__main__":
  main()
