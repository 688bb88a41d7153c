"""Cost of every estimator of `sj.expectation`: value and gradient, side by side in one run.

  python -m benchmarks.bench_estimators [--repeats 15] [--out results.json]

Times `jax.value_and_grad` of `sj.expectation(f, key, scores, k, estimator=...)` (jitted,
`f` a per-row quadratic loss) at the sizes of the examples: L2X (1000 rows, n = 10, k = 5),
dKNN (100 queries, n = 100 candidates, k = 9) and a discrete VAE (2000 groups of n = 20,
k = 10). Ratios to "relaxed" are measured in the same run, alternating the contenders.
"score_function" uses 2 draws (its baseline needs two), every other estimator one.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import subsets_jax as sj
from benchmarks.common import machine, median_times, write_results

SIZES = {"l2x": (1000, 10, 5), "dknn": (100, 100, 9), "vae": (2000, 20, 10)}
CONTENDERS = [(e, None) for e in sj.ESTIMATORS if e != "score_function"] + [
  ("score_function", family) for family in sj.FAMILIES
]


def _loss(z):
  target = jnp.broadcast_to(jnp.linspace(0.0, 1.0, z.shape[-1]), z.shape)
  return jnp.sum((z - target) ** 2, axis=-1)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=15, help="timed calls per contender")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  results = {"machine": info, "times_ms": {}}
  key = jax.random.key(0)
  for size, (rows, n, k) in SIZES.items():
    scores = jax.random.normal(jax.random.key(1), (rows, n))
    fns = {}
    for estimator, family in CONTENDERS:
      draws = 2 if estimator == "score_function" else 1

      @jax.jit
      def step(s, estimator=estimator, family=family, draws=draws):
        objective = lambda s: jnp.sum(
          sj.expectation(
            _loss, key, s, k, estimator=estimator, family=family, num_samples=draws, tau=0.5
          )
        )
        return jax.value_and_grad(objective)(s)

      name = estimator + (f" ({family})" if family else "")
      fns[name] = lambda step=step: jax.block_until_ready(step(scores))
    times = median_times(fns, args.repeats)
    results["times_ms"][size] = {name: t * 1e3 for name, t in times.items()}
    print(f"\n{size}: {rows} rows, n = {n}, k = {k}")
    print(f"{'estimator':>30} {'ms':>9} {'/ relaxed':>10}")
    for name, t in times.items():
      print(f"{name:>30} {t * 1e3:9.3f} {t / times['relaxed']:10.2f}")
  write_results(args.out, results)


if __name__ == "__main__":
  main()
