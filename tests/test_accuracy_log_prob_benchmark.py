"""The accuracy benchmark's reference quadrature against closed forms (k = 1, 2)."""

import itertools
import math

import numpy as np
import pytest

from benchmarks import accuracy_log_prob


def _draw_probability(weights, subset) -> float:
  """P(the unordered set) by summing the Plackett-Luce probability of every order."""
  total = 0.0
  for order in itertools.permutations(subset):
    left, p = weights.sum(), 1.0
    for item in order:
      p *= weights[item] / left
      left -= weights[item]
    total += p
  return total


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_reference_matches_enumerated_orders(k, scale):
  rng = np.random.default_rng(k)
  scores = rng.normal(size=7) * scale
  subset = rng.choice(7, k, replace=False)
  exact = math.log(_draw_probability(np.exp(scores), subset))
  assert accuracy_log_prob._reference(scores, subset, 40001) == pytest.approx(exact, abs=1e-12)
