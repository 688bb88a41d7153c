"""Accuracy of `unordered_subset_log_prob` against a dense float64 quadrature.

  python -m benchmarks.accuracy_log_prob [--reference_nodes 40001] [--out FILE]

The probability that a Gumbel-top-k draw (Plackett-Luce without replacement) yields the
set S, with l_s = log(w_s / w_rest), is

  P(S) = integral over z of exp(z - e^z) prod_{s in S} (1 - exp(-e^(z + l_s))) dz.

The reference evaluates it in NumPy, float64, by the trapezoidal rule on
`--reference_nodes` equally spaced nodes on [-150, 12]: its spacing resolves the
integrand's peak (width about 1 / sqrt(k + 1)) at every k here, and the range holds all
but a negligible share of the integral. The cases: n in {20, 100, 1000}, every k in {1,
2, 3, 10, 50, 100} below n, score scales 0.01 to 100, with and without a heavy tenth of
the items (+ log n), and four sets per row (a Gumbel-top-k sample, the k most and least
probable items, k items uniformly at random). Printed: the largest error in log P relative
to max(1, |log P|) in float32 and float64, and its case.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import machine, write_results

SIZES = (20, 100, 1000)
KS = (1, 2, 3, 10, 50, 100)
SCALES = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def _reference(scores: np.ndarray, subset: np.ndarray, nodes: int) -> float:
  """log P(S) by the dense float64 trapezoidal rule (independent of the library)."""
  rest = np.delete(scores, subset)
  log_rest = np.logaddexp.reduce(rest)
  ell = scores[subset] - log_rest
  low, high = -150.0, 12.0
  z = np.linspace(low, high, nodes)
  y = ell[None, :] + z[:, None]
  # log(1 - exp(-e^y)): the series y - e^y / 2 where e^y is too small for expm1 to matter.
  with np.errstate(over="ignore"):
    x = np.exp(np.minimum(y, 30.0))
    factors = np.where(y < -20, y - 0.5 * x, np.log(-np.expm1(-np.maximum(x, 1e-300))))
  log_integrand = z - np.exp(z) + factors.sum(axis=1)
  peak = log_integrand.max()
  weights = np.full(nodes, 1.0)
  weights[[0, -1]] = 0.5
  # Not z[1] - z[0]: that difference of two numbers near 150 keeps 12 digits, not 16.
  spacing = (high - low) / (nodes - 1)
  return float(peak + np.log(spacing * np.sum(weights * np.exp(log_integrand - peak))))


def _cases(rng: np.random.Generator):
  for n in SIZES:
    for k in (k for k in KS if k < n):
      for scale in SCALES:
        for heavy in (False, True):
          scores = rng.normal(size=n) * scale
          if heavy:
            scores[: n // 10] += np.log(n)
          sample = np.argsort(-(scores + rng.gumbel(size=n)))[:k]
          sets = {
            "sample": sample,
            "most": np.argsort(-scores)[:k],
            "least": np.argsort(scores)[:k],
            "random": rng.choice(n, k, replace=False),
          }
          for kind, subset in sets.items():
            yield {"n": n, "k": k, "scale": scale, "heavy": heavy, "set": kind}, scores, subset


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reference_nodes", type=int, default=40001, help="nodes of the reference")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()

  import jax

  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp

  import subsets_jax as sj

  log_prob = jax.jit(sj.unordered_subset_log_prob)
  worst = {"float32": (0.0, None), "float64": (0.0, None)}
  count = 0
  for case, scores, subset in _cases(np.random.default_rng(0)):
    reference = _reference(scores, subset, args.reference_nodes)
    for dtype in (jnp.float32, jnp.float64):
      value = float(log_prob(jnp.asarray(scores, dtype), jnp.asarray(subset)))
      error = abs(value - reference) / max(1.0, abs(reference))
      name = jnp.dtype(dtype).name
      if error > worst[name][0]:
        worst[name] = (error, {**case, "log_p": reference})
    count += 1
  info = machine()
  print(f"{info['cpu']}; JAX {info['jax']}; {info['date']}; {count} cases")
  for name, (error, case) in worst.items():
    print(f"{name}: largest relative error {error:.2g} at {json.dumps(case)}")
  write_results(args.out, {"machine": info, "cases": count, "worst": worst})


if __name__ == "__main__":
  main()
