"""`exactly_k_entropy`: enumeration in float64 NumPy, gradients, excluded items, NaN, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import subsets_jax as sj
from tests import reference


def _entropy_numpy(logits, k):
  """float64 NumPy: -sum_S p(S) log p(S) over the k-sets of the finite items."""
  logits = np.asarray(logits, np.float64)
  items = np.flatnonzero(np.isfinite(logits))
  scores = np.array([logits[items[list(s)]].sum() for s in reference.all_sets(len(items), k)])
  # log-sum-exp by hand: log p(S) = score - log Z, no overflow at large scales.
  top = scores.max()
  log_z = top + np.log(np.sum(np.exp(scores - top)))
  log_p = scores - log_z
  return float(-np.sum(np.exp(log_p) * log_p))


CASES = [(1, 1), (2, 1), (4, 2), (5, 5), (6, 1), (7, 3), (8, 4), (8, 8)]


@pytest.mark.parametrize("n,k", CASES)
def test_matches_enumeration_float64(n, k, rng, x64):
  # One row per scale: nearly uniform, moderate, peaked.
  logits = rng.normal(size=(3, n)) * np.array([[0.3], [2.0], [6.0]])
  h = sj.exactly_k_entropy(jnp.asarray(logits), k)
  assert h.dtype == jnp.float64 and h.shape == (3,)
  expected = [_entropy_numpy(row, k) for row in logits]
  np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-10)
  if k == n:
    np.testing.assert_array_equal(h, 0)  # a single set


@pytest.mark.parametrize("n,k", [(5, 2), (8, 3), (8, 8)])
def test_matches_enumeration_float32_and_batched(n, k, rng):
  logits = rng.normal(size=(3, n)) * 2
  h = sj.exactly_k_entropy(jnp.asarray(logits, jnp.float32), k)
  assert h.dtype == jnp.float32 and h.shape == (3,)
  expected = [_entropy_numpy(row, k) for row in logits]
  np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,k", [(6, 2), (8, 5)])
def test_large_logits_match_enumeration_float64(n, k, rng, x64):
  logits = rng.normal(size=(2, n)) * 50
  h = sj.exactly_k_entropy(jnp.asarray(logits), k)
  expected = [_entropy_numpy(row, k) for row in logits]
  np.testing.assert_allclose(h, expected, rtol=1e-8, atol=1e-8)


def test_excluded_items_are_left_out(rng, x64):
  logits = rng.normal(size=(3, 7))
  logits[0, [1, 4]] = -np.inf
  logits[1, 6] = -np.inf
  logits[2, [0, 2, 3, 5]] = -np.inf  # exactly k = 3 finite items: one set, H = 0
  h = sj.exactly_k_entropy(jnp.asarray(logits), 3)
  expected = [_entropy_numpy(row, 3) for row in logits]
  np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-10)
  assert float(h[2]) == 0
  # The number of finite items, not n, sets the uniform entropy.
  uniform = jnp.array([0.0, -jnp.inf, 0.0, 0.0, -jnp.inf, 0.0])
  np.testing.assert_allclose(float(sj.exactly_k_entropy(uniform, 2)), math.log(6), rtol=1e-12)


@pytest.mark.parametrize("n,k", [(1, 1), (5, 1), (6, 3), (8, 4), (8, 7)])
def test_uniform_logits_give_log_binomial(n, k, x64):
  for value in (0.0, 3.7):
    h = sj.exactly_k_entropy(jnp.full((n,), value), k)
    np.testing.assert_allclose(float(h), math.log(math.comb(n, k)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,k", [(5, 2), (8, 3)])
def test_kl_to_uniform_is_nonnegative(n, k, rng, x64):
  logits = rng.normal(size=(50, n)) * rng.uniform(0, 5, size=(50, 1))
  kl = math.log(math.comb(n, k)) - sj.exactly_k_entropy(jnp.asarray(logits), k)
  assert float(jnp.min(kl)) >= -1e-12
  # ... and the KL is the enumerated one.
  expected = [math.log(math.comb(n, k)) - _entropy_numpy(row, k) for row in logits]
  np.testing.assert_allclose(kl, expected, atol=1e-10)


def _finite_difference_grad(logits, k, step=1e-6):
  grad = np.zeros_like(logits)
  for i in range(len(logits)):
    up, down = logits.copy(), logits.copy()
    up[i] += step
    down[i] -= step
    grad[i] = (_entropy_numpy(up, k) - _entropy_numpy(down, k)) / (2 * step)
  return grad


@pytest.mark.parametrize("n,k", [(4, 1), (6, 2), (7, 4)])
def test_gradient_matches_finite_differences_of_enumeration(n, k, rng, x64):
  logits = rng.normal(size=n) * 1.5
  grad = jax.grad(lambda x: sj.exactly_k_entropy(x, k))(jnp.asarray(logits))
  np.testing.assert_allclose(grad, _finite_difference_grad(logits, k), rtol=1e-6, atol=1e-7)
  check_grads(lambda x: sj.exactly_k_entropy(x, k), (jnp.asarray(logits),), order=1, modes=["rev"])


@pytest.mark.parametrize("n, k", [(5, 2), (7, 3)])
def test_second_derivatives_and_forward_mode_match_finite_differences(n, k, rng, x64):
  logits = rng.normal(size=(2, n))
  check_grads(
    lambda x: sj.exactly_k_entropy(x, k), (jnp.asarray(logits),), order=2, modes=["fwd", "rev"]
  )


def test_gradient_with_an_excluded_item(rng, x64):
  logits = rng.normal(size=6)
  logits[2] = -np.inf
  grad = jax.grad(lambda x: sj.exactly_k_entropy(x, 3))(jnp.asarray(logits))
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(grad[2]) == 0
  finite = np.delete(logits, 2)
  np.testing.assert_allclose(
    np.delete(np.asarray(grad), 2), _finite_difference_grad(finite, 3), rtol=1e-6, atol=1e-7
  )


def test_nan_row_gives_nan_under_jit_only_for_that_row(rng):
  logits = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32).at[1, 2].set(jnp.nan)
  h = jax.jit(lambda x: sj.exactly_k_entropy(x, 2))(logits)
  assert bool(jnp.isnan(h[1]))
  assert bool(jnp.all(jnp.isfinite(h[jnp.array([0, 2])])))
  np.testing.assert_allclose(
    h[jnp.array([0, 2])],
    [_entropy_numpy(np.asarray(logits[0]), 2), _entropy_numpy(np.asarray(logits[2]), 2)],
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize(
  "logits,k,error,match",
  [
    (jnp.array([0.0, jnp.nan, 1.0]), 1, ValueError, "must not contain NaN"),
    (jnp.zeros(4), 0, ValueError, "k must satisfy"),
    (jnp.zeros(4), 5, ValueError, "k must satisfy"),
    (jnp.zeros(4), 2.0, TypeError, "k must be a Python int"),
  ],
)
def test_bad_input_is_rejected(logits, k, error, match):
  with pytest.raises(error, match=match):
    sj.exactly_k_entropy(logits, k)


def test_enumeration_helper_sanity():
  # Guards the reference itself: two items, k = 1 is the Bernoulli entropy.
  p = 1 / (1 + math.exp(-0.7))
  expected = -(p * math.log(p) + (1 - p) * math.log(1 - p))
  assert abs(_entropy_numpy(np.array([0.7, 0.0]), 1) - expected) < 1e-15
