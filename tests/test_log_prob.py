"""Ordered and unordered subset log-probabilities against enumeration and quadrature."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import integrate

import subsets_jax as sj
from tests import reference


def _batched(scores, index_sets):
  idx = jnp.asarray(index_sets)
  return jnp.broadcast_to(scores, (idx.shape[0], scores.shape[-1])), idx


@pytest.mark.parametrize("n,k", [(5, 1), (5, 3), (6, 6)])
def test_ordered_matches_formula_and_sums_to_one(n, k, rng):
  weights = rng.dirichlet(np.ones(n))
  orders = reference.all_orders(n, k)
  scores, idx = _batched(jnp.log(jnp.asarray(weights, jnp.float32)), orders)
  ours = np.exp(np.asarray(sj.subset_log_prob(scores, idx), np.float64))
  ref = np.array([reference.ordered_prob_numpy(weights, o) for o in orders])
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  np.testing.assert_allclose(ours.sum(), 1, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("n,k", [(4, 2), (6, 1), (7, 3), (7, 5), (8, 6), (6, 6)])
def test_unordered_matches_enumeration(scale, n, k, rng):
  scores = jnp.asarray(rng.normal(size=n) * scale, jnp.float32)
  sets = reference.all_sets(n, k)
  weights = np.exp(np.asarray(scores, np.float64))
  enumerated = np.array(
    [sum(reference.ordered_prob_numpy(weights, o) for o in itertools.permutations(s)) for s in sets]
  )
  ours = np.exp(np.asarray(sj.unordered_subset_log_prob(*_batched(scores, sets)), np.float64))
  np.testing.assert_allclose(ours, enumerated, rtol=1e-4)
  np.testing.assert_allclose(ours.sum(), 1, rtol=1e-4)


def test_unordered_ignores_order(rng):
  scores = jnp.asarray(rng.normal(size=9), jnp.float32)
  a = sj.unordered_subset_log_prob(scores, jnp.array([4, 1, 7]))
  b = sj.unordered_subset_log_prob(scores, jnp.array([7, 4, 1]))
  np.testing.assert_allclose(a, b, rtol=1e-6)


# The peak of the integrand narrows as 1 / sqrt(k): (1000, 100, 0.1) has it 0.1 wide.
@pytest.mark.parametrize(
  "n,k,scale", [(64, 16, 1.0), (64, 32, 1.0), (64, 32, 4.0), (64, 48, 2.0), (1000, 100, 0.1)]
)
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 3e-5), (jnp.float64, 1e-8)])
def test_unordered_large_k_matches_scipy_quadrature(n, k, scale, dtype, atol, rng, x64):
  scores = rng.normal(size=n) * scale
  chosen = rng.permutation(n)[:k]
  w = np.exp(scores - scores.max())
  rest = np.delete(w, chosen).sum()
  ratios = w[chosen] / rest

  # P(S) = int_0^1 prod_s (1 - v^r_s) dv, with v = exp(-e^t), integrated by adaptive
  # float64 quadrature on the log scale, breaking the range where each factor switches on.
  def integrand(t):
    u = np.exp(t)
    return np.exp(t - u + np.sum(np.log(-np.expm1(-ratios * u))))

  breaks = np.sort(np.clip(-np.log(ratios), -70, 6))
  edges = np.concatenate([[-80.0], breaks, [np.log(k + 200.0)]])
  expected = sum(
    integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-11, limit=200)[0]
    for a, b in itertools.pairwise(edges)
    if b > a
  )
  ours = sj.unordered_subset_log_prob(jnp.asarray(scores, dtype), jnp.asarray(chosen))
  assert ours.dtype == dtype
  # float32 rounds each of the k factors' logs.
  np.testing.assert_allclose(float(ours), np.log(expected), atol=atol, rtol=k * 1e-7)
  grad = jax.grad(sj.unordered_subset_log_prob)(jnp.asarray(scores, dtype), jnp.asarray(chosen))
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_vanishing_probability_stays_finite_in_log_space():
  scores = jnp.array([0.0, 0.0, 0.0, -200.0, -300.0])
  lp = sj.unordered_subset_log_prob(scores, jnp.array([3, 4]))
  # Either order: draw one from a mass of about 3, then the other from about 3.
  np.testing.assert_allclose(float(lp), -500 - 2 * np.log(3) + np.log(2), atol=1e-3)
  ordered = sj.subset_log_prob(scores, jnp.array([3, 4]))
  np.testing.assert_allclose(float(ordered), -500 - 2 * np.log(3), atol=1e-3)


def test_excluded_and_full_sets():
  scores = jnp.array([0.0, -jnp.inf, 1.0, 2.0])
  assert float(sj.unordered_subset_log_prob(scores, jnp.array([1, 2]))) == -np.inf
  assert float(sj.subset_log_prob(scores, jnp.array([1, 2]))) == -np.inf
  # Every finite item chosen: the set is certain.
  assert float(sj.unordered_subset_log_prob(scores, jnp.array([0, 2, 3]))) == 0.0


@pytest.mark.parametrize("fn", [sj.subset_log_prob, sj.unordered_subset_log_prob])
def test_gradients_match_finite_differences(fn, rng, x64):
  scores = jnp.asarray(rng.normal(size=(2, 6)), jnp.float64)
  idx = jnp.array([[0, 3, 5], [2, 1, 4]])
  check_grads(lambda s: fn(s, idx), (scores,), order=1, modes=("rev", "fwd"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fn", [sj.subset_log_prob, sj.unordered_subset_log_prob])
def test_jit_and_vmap(fn, rng):
  scores = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  idx = jnp.array([[0, 3], [2, 1], [6, 5]])
  rows = jnp.stack([fn(scores[i], idx[i]) for i in range(3)])
  np.testing.assert_allclose(jax.jit(fn)(scores, idx), rows, rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(fn)(scores, idx), rows, rtol=1e-5)


@pytest.mark.parametrize("fn", [sj.subset_log_prob, sj.unordered_subset_log_prob])
@pytest.mark.parametrize(
  "idx,error,match",
  [
    (jnp.array([0.0, 1.0]), TypeError, "integer"),
    (jnp.array([[0, 1]]), ValueError, "shape"),
    (jnp.array([0, 5]), ValueError, r"\[0, n\)"),
    (jnp.array([-1, 2]), ValueError, r"\[0, n\)"),
    (jnp.array([2, 2]), ValueError, "repeat"),
    (jnp.arange(6), ValueError, "1 <= "),
  ],
)
def test_bad_indices_rejected(fn, idx, error, match):
  with pytest.raises(error, match=match):
    fn(jnp.zeros(5), idx)


def test_widely_spread_scores_have_finite_float32_gradients():
  # A set holding the largest scores, 84 nats above the rest: exp(z + l) overflows float32 at
  # the top quadrature nodes, which must not turn the gradient into NaN.
  t = np.array([63.26, 22.37, -18.85, 65.98, 17.78, -29.09, -52.39, -66.71, -20.10, 19.30])
  idx = jnp.array([3, 0, 1, 9, 4])
  fn = lambda s: sj.unordered_subset_log_prob(s, idx)
  value = fn(jnp.asarray(t, jnp.float32))
  grad = jax.grad(fn)(jnp.asarray(t, jnp.float32))
  assert np.all(np.isfinite(grad)) and float(value) <= 0.0
  with jax.enable_x64(True):
    grad64 = np.asarray(jax.grad(fn)(jnp.asarray(t, jnp.float64)))
  np.testing.assert_allclose(np.asarray(grad), grad64, atol=1e-6)
  # Half as spread, the gradient is not negligible and still matches float64.
  half = jax.grad(fn)(jnp.asarray(t / 8, jnp.float32))
  with jax.enable_x64(True):
    half64 = np.asarray(jax.grad(fn)(jnp.asarray(t / 8, jnp.float64)))
  assert np.abs(half64).max() > 1e-3
  np.testing.assert_allclose(np.asarray(half), half64, rtol=1e-3, atol=1e-6)
