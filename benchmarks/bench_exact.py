"""Exact quantities: time and memory of inclusion probabilities and the exactly-k family.

  python -m benchmarks.bench_exact [--repeats 3] [--sizes 1000,10000,100000] [--ks 10,100]

For one row of `n` scores: the median time of `inclusion_probs`, the exactly-k family's
marginals, sample and entropy, and `unordered_subset_log_prob` of a Gumbel-top-k draw (each
jitted, after a warm-up call), and the compiled temporary memory of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import subsets_jax as sj
from benchmarks.common import compiled_temp_bytes, machine, write_results

FUNCTIONS = {
  "inclusion_probs": lambda key, s, k: sj.inclusion_probs(s, k),
  "exactly_k_marginals": lambda key, s, k: sj.exactly_k_marginals(s, k),
  "exactly_k_sample": lambda key, s, k: sj.exactly_k_sample(key, s, k),
  "exactly_k_entropy": lambda key, s, k: sj.exactly_k_entropy(s, k),
  "unordered_subset_log_prob": lambda key, s, k: sj.unordered_subset_log_prob(
    s, sj.gumbel_topk(key, s, k)
  ),
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=3, help="timed calls per function and size")
  p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated n")
  p.add_argument("--ks", default="10,100", help="comma-separated k")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  print(f"{'function':>26} {'n':>7} {'k':>4} | {'time (s)':>9} {'temp (MB)':>9}")
  key = jax.random.key(0)
  rows = []
  for n in map(int, args.sizes.split(",")):
    scores = jax.random.normal(jax.random.key(1), (n,)) * 2
    for k in map(int, args.ks.split(",")):
      for name, fn in FUNCTIONS.items():
        jitted = jax.jit(fn, static_argnums=2)
        temp = compiled_temp_bytes(jitted, key, scores, k) / 2**20
        jax.block_until_ready(jitted(key, scores, k))
        times = []
        for _ in range(args.repeats):
          start = time.perf_counter()
          jax.block_until_ready(jitted(key, scores, k))
          times.append(time.perf_counter() - start)
        row = {
          "function": name,
          "n": n,
          "k": k,
          "time_s": statistics.median(times),
          "temp_mb": temp,
        }
        rows.append(row)
        print(f"{name:>26} {n:>7} {k:>4} | {row['time_s']:9.3f} {temp:9.1f}", flush=True)
  write_results(args.out, {"machine": info, "rows": rows})


if __name__ == "__main__":
  main()
