"""Exact quantities: time and memory of inclusion probabilities and the exactly-k family.

  python -m benchmarks.bench_exact [--repeats 3] [--sizes 1000,10000,100000] [--ks 10,100]
                                   [--rows 1] [--functions NAME,...] [--baseline DIR]
                                   [--rounds 2]

For `--rows` rows of `n` scores: the median time of `inclusion_probs`, the exactly-k
family's marginals, sample and entropy (and the entropy's value and gradient,
`exactly_k_entropy_grad`), `unordered_subset_log_prob` of a Gumbel-top-k draw,
and the value and gradient of `unordered_subset_log_prob` at a fixed draw
(`unordered_subset_log_prob_grad`, as the score function and the VAE's KL use it), each
jitted, after a warm-up call; and the compiled temporary memory of each. Each version of
the library runs in its own worker process: this checkout and, with `--baseline DIR`,
another checkout (a `git worktree` of an earlier commit), alternating for `--rounds`
rounds; the table gives the median over all rounds and the ratio baseline / current.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from benchmarks.common import (
  REPO,
  call_times,
  compiled_temp_bytes,
  load_library,
  machine,
  median_row,
  run_checkouts,
  write_results,
)

FUNCTIONS = (
  "inclusion_probs",
  "exactly_k_marginals",
  "exactly_k_sample",
  "exactly_k_entropy",
  "exactly_k_entropy_grad",
  "unordered_subset_log_prob",
  "unordered_subset_log_prob_grad",
)


def _function(name: str):
  """`f(key, scores, k, draw)`; `draw` is a Gumbel-top-k sample of `scores`, drawn untimed."""
  import jax
  import jax.numpy as jnp

  import subsets_jax as sj

  if name == "exactly_k_sample":
    return lambda key, s, k, draw: sj.exactly_k_sample(key, s, k)
  if name == "unordered_subset_log_prob":
    return lambda key, s, k, draw: sj.unordered_subset_log_prob(s, sj.gumbel_topk(key, s, k))
  if name == "exactly_k_entropy_grad":
    return lambda key, s, k, draw: jax.value_and_grad(
      lambda s: jnp.sum(sj.exactly_k_entropy(s, k))
    )(s)
  if name == "unordered_subset_log_prob_grad":
    grad = jax.value_and_grad(lambda s, draw: jnp.sum(sj.unordered_subset_log_prob(s, draw)))
    return lambda key, s, k, draw: grad(s, draw)
  return lambda key, s, k, draw: getattr(sj, name)(s, k)


def worker(args) -> None:
  """Times every function and size with the `subsets_jax` under `--library`; prints JSON."""
  load_library(pathlib.Path(args.library))
  import jax

  import subsets_jax as sj

  key = jax.random.key(0)
  rows = []
  for n in map(int, args.sizes.split(",")):
    shape = (n,) if args.rows == 1 else (args.rows, n)
    scores = jax.random.normal(jax.random.key(1), shape) * 2
    for k in map(int, args.ks.split(",")):
      draw = sj.gumbel_topk(key, scores, k)
      for name in args.functions.split(","):
        jitted = jax.jit(_function(name), static_argnums=2)
        temp = compiled_temp_bytes(jitted, key, scores, k, draw) / 2**20
        times = call_times(lambda: jitted(key, scores, k, draw), args.repeats)
        rows.append(
          {"function": name, "rows": args.rows, "n": n, "k": k, "times_s": times, "temp_mb": temp}
        )
        print(f"{name} n={n} k={k} done", file=sys.stderr, flush=True)
  json.dump(rows, sys.stdout)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=3, help="timed calls per function and size")
  p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated n")
  p.add_argument("--ks", default="10,100", help="comma-separated k")
  p.add_argument("--rows", type=int, default=1, help="rows of scores per call (a batch)")
  p.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated names")
  p.add_argument("--baseline", default=None, help="another checkout of the library to compare")
  p.add_argument("--rounds", type=int, default=1, help="alternating rounds of worker processes")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--library", default=str(REPO), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args)
    return
  flags = ["--repeats", str(args.repeats), "--sizes", args.sizes, "--ks", args.ks]
  flags += ["--rows", str(args.rows)]
  flags += ["--functions", args.functions]
  runs = run_checkouts("benchmarks.bench_exact", flags, args.baseline, args.rounds)
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  header = f"{'function':>30} {'rows':>5} {'n':>7} {'k':>4} | {'time (ms)':>10} {'temp (MB)':>9}"
  if args.baseline:
    header += f" | {'baseline':>10} {'temp':>7} {'base/cur':>8}"
  print(header)
  rows = []
  for i, first in enumerate(runs["current"][0]):
    row = {key: first[key] for key in ("function", "n", "k", "temp_mb")}
    row["rows"] = args.rows
    row.update(median_row(runs, i))
    line = f"{row['function']:>30} {args.rows:>5} {row['n']:>7} {row['k']:>4} | "
    line += f"{1e3 * row['time_s']:10.3f}"
    line += f" {row['temp_mb']:9.1f}"
    if args.baseline:
      base = runs["baseline"]
      row["baseline_temp_mb"] = base[0][i]["temp_mb"]
      line += f" | {1e3 * row['baseline_time_s']:10.3f} {row['baseline_temp_mb']:7.1f}"
      line += f" {row['baseline_over_current']:8.2f}"
    rows.append(row)
    print(line, flush=True)
  write_results(args.out, {"machine": info, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
  main()
