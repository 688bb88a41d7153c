"""The relaxed top-k's CPU implementations side by side: XLA, the C++ kernel, PyTorch.

  python -m benchmarks.bench_cpu_kernel [--repeats 12] [--no_torch] [--out results.json]

Per op-benchmark case, timed interleaved in one process (medians): the noise-free
forward and forward+backward (value and gradient of `sum(w * soft_topk(s))`) with
`implementation="xla"` (the default) and `implementation="cpu_kernel"` (the fused C++ kernel,
`subsets_jax/_src/csrc/relaxed_topk.cc`), and the seed's PyTorch recursion on the same scores;
forward+backward with Gumbel noise (`gumbel_topk_relaxed(..., implementation="cpu_kernel")`
against `SubsetOperator`); the roofline floor as in `bench_op`. The kernel's loss value and
gradient are compared with XLA's first (the gradient's max |diff| is printed and stored; the
accuracy checks are in `tests/test_cpu_kernel.py`).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import subsets_jax as sj
from benchmarks.bench_op import CASES, TAU, measure_ceilings, roofline_floor
from benchmarks.common import add_settle_flag, median_times, restart_for_timing, write_results
from subsets_jax._src import cpu_kernel


def jax_contenders(k: int, scores, w, key):
  """Name -> no-argument call that waits for its result."""

  def fns(impl):
    topk = lambda s: sj.soft_topk(s, k, TAU, implementation=impl)
    fwd = jax.jit(topk)
    fwd_bwd = jax.jit(jax.value_and_grad(lambda s: jnp.sum(w * topk(s))))
    return fwd, fwd_bwd

  (lib_fwd, lib_fwd_bwd), (ker_fwd, ker_fwd_bwd) = fns("xla"), fns("cpu_kernel")
  relaxed = lambda s: sj.gumbel_topk_relaxed(key, s, k, TAU, implementation="cpu_kernel")
  noisy = jax.jit(jax.value_and_grad(lambda s: jnp.sum(w * relaxed(s))))
  wait = jax.block_until_ready
  return {
    "lib_fwd_s": lambda: wait(lib_fwd(scores)),
    "kernel_fwd_s": lambda: wait(ker_fwd(scores)),
    "lib_fwd_bwd_s": lambda: wait(lib_fwd_bwd(scores)),
    "kernel_fwd_bwd_s": lambda: wait(ker_fwd_bwd(scores)),
    "kernel_noisy_fwd_bwd_s": lambda: wait(noisy(scores)),
  }, (lib_fwd_bwd, ker_fwd_bwd)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=12)
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  add_settle_flag(p)
  args = p.parse_args()
  restart_for_timing(1, "benchmarks.bench_cpu_kernel")
  cpu_kernel.library()
  torch = None
  if not args.no_torch:
    import torch

    from benchmarks import torch_reference
  results = {
    "machine": f"{platform.node()} {platform.processor()} ({jax.devices()[0]})",
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "torch": None if torch is None else torch.__version__,
    "kernel_flags": list(cpu_kernel.flags()),
    "kernel_vector_lanes": cpu_kernel.vector_lanes(),
    "cases": [],
  }
  ceilings = measure_ceilings(args.repeats)
  results["ceilings"] = ceilings
  print(
    f"device {jax.devices()[0]}; bandwidth {ceilings['bandwidth_gb_s']:.1f} GB/s, "
    f"exp {ceilings['exp_per_s'] / 1e9:.2f} G/s; times in ms; no noise unless said"
  )
  print(
    f"{'B':>4} {'N':>7} {'k':>3} | {'fwd lib':>8} {'kernel':>7} {'torch':>7} | "
    f"{'f+b lib':>8} {'kernel':>7} {'torch':>7} {'floor':>6} {'x floor':>7} "
    f"{'torch/ker':>9} | {'noisy f+b':>9} {'torch':>7} {'torch/ker':>9}"
  )
  rng = np.random.default_rng(0)
  for b, n, k in CASES:
    scores_np = rng.normal(size=(b, n)).astype(np.float32) * 2
    w_np = rng.normal(size=(b, n)).astype(np.float32)
    scores, w = jnp.asarray(scores_np), jnp.asarray(w_np)
    fns, (lib_fb, ker_fb) = jax_contenders(k, scores, w, jax.random.key(1))
    row = {"B": b, "N": n, "k": k}
    (lib_v, lib_g), (ker_v, ker_g) = lib_fb(scores), ker_fb(scores)
    row["max_abs_diff_value"] = float(abs(float(lib_v) - float(ker_v)))
    row["max_abs_diff_grad"] = float(jnp.abs(lib_g - ker_g).max())
    if torch is not None:
      ts, tw = torch.from_numpy(scores_np), torch.from_numpy(w_np)

      def torch_fwd():
        with torch.no_grad():
          torch_reference.subset_operator(ts, k, TAU, noise=False)

      def torch_fwd_bwd(noise=False):
        s = ts.clone().requires_grad_(True)
        (tw * torch_reference.subset_operator(s, k, TAU, noise=noise)).sum().backward()

      fns["torch_fwd_s"] = torch_fwd
      fns["torch_fwd_bwd_s"] = torch_fwd_bwd
      fns["torch_noisy_fwd_bwd_s"] = lambda: torch_fwd_bwd(noise=True)
    row.update(median_times(fns, args.repeats, settle_s=args.settle_ms / 1e3))
    row["floor_fwd_bwd_s"] = roofline_floor(b, n, k, ceilings, backward=True)
    row["kernel_over_floor"] = row["kernel_fwd_bwd_s"] / row["floor_fwd_bwd_s"]
    if torch is not None:
      row["ratio_torch_kernel_fwd_bwd"] = row["torch_fwd_bwd_s"] / row["kernel_fwd_bwd_s"]
      row["ratio_torch_kernel_noisy"] = row["torch_noisy_fwd_bwd_s"] / row["kernel_noisy_fwd_bwd_s"]
    results["cases"].append(row)
    ms = lambda name, width=7: f"{row[name] * 1e3:{width}.2f}" if name in row else f"{'-':>{width}}"
    ratio = lambda name: f"{row[name]:9.1f}" if name in row else f"{'-':>9}"
    print(
      f"{b:>4} {n:>7} {k:>3} | {ms('lib_fwd_s', 8)} {ms('kernel_fwd_s')} {ms('torch_fwd_s')} | "
      f"{ms('lib_fwd_bwd_s', 8)} {ms('kernel_fwd_bwd_s')} {ms('torch_fwd_bwd_s')} "
      f"{ms('floor_fwd_bwd_s', 6)} {row['kernel_over_floor']:7.1f} "
      f"{ratio('ratio_torch_kernel_fwd_bwd')} | {ms('kernel_noisy_fwd_bwd_s', 9)} "
      f"{ms('torch_noisy_fwd_bwd_s')} {ratio('ratio_torch_kernel_noisy')}"
      f"   grad max|diff| vs library {row['max_abs_diff_grad']:.1e}"
    )
  write_results(args.out, results)


if __name__ == "__main__":
  main()
