"""XLA:CPU's vector width for this library's ops: XLA's default against 512-bit vectors.

  python -m benchmarks.bench_vector_width [--repeats 15] [--width 512] [--out results.json]

`xla_cpu_prefer_vector_width` is an XLA compile option that a user sets per function
(`jax.jit(f, compiler_options={"xla_cpu_prefer_vector_width": 512})`); the library cannot
set it for the caller's `jit`. Per op-benchmark case this times, interleaved in one
process, the Gumbel noise (`gumbel_noise`), the forward (`gumbel_topk_relaxed`) and the
noise-free forward+backward (`soft_topk`) compiled both ways, checks that both give the same
values (bit for bit), and prints default time / wide time.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import subsets_jax as sj
from benchmarks.bench_op import CASES, TAU
from benchmarks.common import median_times, restart_for_timing, write_results

OPS = ("noise", "fwd", "soft_fwd_bwd")


def compiled_ops(k: int, options):
  jit = lambda f: jax.jit(f, compiler_options=options)
  return {
    "noise": jit(sj.gumbel_noise),
    "fwd": jit(lambda key, s: sj.gumbel_topk_relaxed(key, s, k, TAU)),
    "soft_fwd_bwd": jit(jax.value_and_grad(lambda s, w: jnp.sum(w * sj.soft_topk(s, k, TAU)))),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--width", type=int, default=512, help="the wide setting's vector width")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()
  restart_for_timing(1, "benchmarks.bench_vector_width")
  settings = {"default": None, "wide": {"xla_cpu_prefer_vector_width": args.width}}
  results = {
    "machine": f"{platform.node()} {platform.processor()} ({jax.devices()[0]})",
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "wide": settings["wide"],
    "cases": [],
  }
  print(
    f"device {jax.devices()[0]}; wide = {settings['wide']}; times in ms; ratio = default / wide"
  )
  print(
    f"{'B':>4} {'N':>7} {'k':>3} | "
    + " | ".join(f"{op:>12} {'wide':>7} {'ratio':>5}" for op in OPS)
  )
  rng = np.random.default_rng(0)
  key = jax.random.key(1)
  for b, n, k in CASES:
    scores = jnp.asarray(rng.normal(size=(b, n)).astype(np.float32) * 2)
    w = jnp.asarray(rng.normal(size=(b, n)).astype(np.float32))
    args_of = {"noise": (key, scores), "fwd": (key, scores), "soft_fwd_bwd": (scores, w)}
    fns, outputs = {}, {}
    for setting, options in settings.items():
      for op, fn in compiled_ops(k, options).items():
        outputs[op, setting] = jax.tree.leaves(fn(*args_of[op]))
        fns[f"{op}_{setting}_s"] = lambda fn=fn, a=args_of[op]: jax.block_until_ready(fn(*a))
    row = {"B": b, "N": n, "k": k}
    row["bitwise_equal"] = all(
      all(
        np.array_equal(x, y)
        for x, y in zip(outputs[op, "default"], outputs[op, "wide"], strict=True)
      )
      for op in OPS
    )
    row.update(median_times(fns, args.repeats))
    for op in OPS:
      row[f"ratio_{op}"] = row[f"{op}_default_s"] / row[f"{op}_wide_s"]
    results["cases"].append(row)
    cells = " | ".join(
      f"{row[f'{op}_default_s'] * 1e3:12.2f} {row[f'{op}_wide_s'] * 1e3:7.2f} "
      f"{row[f'ratio_{op}']:5.2f}"
      for op in OPS
    )
    print(f"{b:>4} {n:>7} {k:>3} | {cells}   bitwise equal: {row['bitwise_equal']}")
  write_results(args.out, results)


if __name__ == "__main__":
  main()
