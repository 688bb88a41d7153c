"""Eager calls against the same call under `jit`: the cost of the argument checks.

  python -m benchmarks.bench_eager [--repeats 15]

A public function called eagerly checks its arguments' values (NaN, +inf, enough finite
scores) before it runs; under `jit` it does not. Prints, per function and size, the median
eager and jitted times (alternating) and the eager overhead in percent.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import subsets_jax as sj
from benchmarks.common import machine, write_results

CASES = {
  "gumbel_topk_relaxed": (
    lambda key, s, k: sj.gumbel_topk_relaxed(key, s, k, tau=1.0),
    (100, 60000),
    9,
  ),
  "gumbel_topk": (lambda key, s, k: sj.gumbel_topk(key, s, k), (100, 60000), 9),
  "simple_topk": (lambda key, s, k: sj.simple_topk(key, s, k), (100, 1000), 9),
}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=15, help="timed calls of each form")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  key = jax.random.key(0)
  rows = []
  for name, (fn, shape, k) in CASES.items():
    scores = jax.random.normal(jax.random.key(1), shape)
    jitted = jax.jit(fn, static_argnums=2)
    forms = {"eager": lambda: fn(key, scores, k), "jit": lambda: jitted(key, scores, k)}
    times = {form: [] for form in forms}
    for call in forms.values():
      jax.block_until_ready(call())
    for _ in range(args.repeats):
      for form, call in forms.items():
        start = time.perf_counter()
        jax.block_until_ready(call())
        times[form].append(time.perf_counter() - start)
    eager, jit = (statistics.median(times[form]) for form in forms)
    rows.append({"function": name, "shape": shape, "k": k, "eager_s": eager, "jit_s": jit})
    print(
      f"{name:>20} {shape!s:>13} k={k}: eager {1e3 * eager:7.1f} ms, jit {1e3 * jit:7.1f} "
      f"ms, overhead {100 * (eager / jit - 1):+.0f} %",
      flush=True,
    )
  write_results(args.out, {"machine": info, "rows": rows})


if __name__ == "__main__":
  main()
