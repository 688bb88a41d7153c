"""inclusion_probs: enumeration, the sampler's frequencies, special cases, gradients, scale."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

import subsets_jax as sj
from tests import reference


def _enumerated_inclusion(weights, k):
  weights = np.asarray(weights, np.float64)
  pi = np.zeros(len(weights))
  for order in itertools.permutations(range(len(weights)), k):
    pi[list(order)] += reference.ordered_prob_numpy(weights, order)
  return pi


CASES = [(n, k) for n in (1, 3, 5, 8) for k in range(1, n + 1)]


@pytest.mark.parametrize("n,k", CASES)
def test_matches_enumeration_float32(n, k, rng):
  scores = rng.normal(size=n) * 2
  ours = sj.inclusion_probs(jnp.asarray(scores, jnp.float32), k)
  np.testing.assert_allclose(ours, _enumerated_inclusion(np.exp(scores), k), atol=2e-5, rtol=0)
  assert abs(float(jnp.sum(ours)) - k) < 2e-5 * n


@pytest.mark.parametrize("n,k", CASES)
def test_matches_enumeration_float64(n, k, rng, x64):
  scores = rng.normal(size=n) * 2
  ours = sj.inclusion_probs(jnp.asarray(scores), k)
  assert ours.dtype == jnp.float64
  np.testing.assert_allclose(ours, _enumerated_inclusion(np.exp(scores), k), atol=1e-8, rtol=0)


def _enumerated_inclusion_log_space(scores, k):
  """As `_enumerated_inclusion`, from log-weights of any spread (no exp overflow)."""
  scores = np.asarray(scores, np.float64)
  pi = np.zeros(len(scores))
  for order in itertools.permutations(range(len(scores)), k):
    left, log_p = np.ones(len(scores), bool), 0.0
    for i in order:
      log_p += scores[i] - scipy.special.logsumexp(scores[left])
      left[i] = False
    pi[list(order)] += np.exp(log_p)
  return pi


@pytest.mark.parametrize("n,k", [(5, 2), (7, 3), (6, 5)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_enumeration_for_widely_spread_scores(n, k, dtype, rng):
  # Spreads far beyond the node range's reach unless the far scores are clipped first.
  for scale in (30.0, 300.0, 1e4):
    scores = rng.normal(size=n) * scale
    scores[1] = scores[0] + 2.0  # and two close ones, whose probabilities are in between
    with jax.enable_x64(dtype == "float64"):
      ours = sj.inclusion_probs(jnp.asarray(scores, dtype), k)
      given = np.asarray(jnp.asarray(scores, dtype), np.float64)  # the rounded input
    expected = _enumerated_inclusion_log_space(given, k)
    atol = 2e-5 if dtype == "float32" else 1e-8
    np.testing.assert_allclose(ours, expected, atol=atol, err_msg=f"scale {scale}")


@pytest.mark.parametrize("k", [1, 3, 10, 40])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_the_plain_integral_with_most_items_divided_out(k, dtype, rng):
  # n = 300 is above the number of items the recursions take (three mean counts at the
  # node range's right end: 75 to 299 in float32, 130 to 212 in float64 but 384 at k = 40),
  # so that the other items' leave-one-out count comes from dividing their factor out.
  scores = rng.normal(size=300) * 2
  scores[:3] += 6.0  # and a few far larger scores, which dominate the mean count early
  with jax.enable_x64(dtype == "float64"):
    ours = sj.inclusion_probs(jnp.asarray(scores, dtype), k)
    given = np.asarray(jnp.asarray(scores, dtype), np.float64)
  expected = reference.inclusion_probs_numpy(given, k)
  np.testing.assert_allclose(ours, expected, atol=2e-5 if dtype == "float32" else 1e-8)


def test_special_cases():
  s = jnp.array([0.3, -1.0, 2.0, -jnp.inf, 0.0])
  np.testing.assert_allclose(sj.inclusion_probs(s, 1), jax.nn.softmax(s), atol=1e-6)
  pi = sj.inclusion_probs(s, 3)
  assert float(pi[3]) == 0
  exactly_k = jnp.array([-jnp.inf, 1.0, 5.0, -jnp.inf])
  np.testing.assert_allclose(sj.inclusion_probs(exactly_k, 2), [0, 1, 1, 0], atol=2e-5)
  # Batch axes.
  batch = jnp.stack([s, s.at[0].set(4.0)])
  np.testing.assert_allclose(sj.inclusion_probs(batch, 2)[0], sj.inclusion_probs(s, 2), atol=1e-7)


def test_agrees_with_gumbel_topk_frequencies(key):
  # n = 300: most items' probabilities come from the division (more than the recursions take).
  n, k, draws = 300, 6, 40_000
  scores = jax.random.normal(key, (n,)) * 1.5
  idx = jax.vmap(lambda kk: sj.gumbel_topk(kk, scores, k))(jax.random.split(key, draws))
  freq = np.bincount(np.asarray(idx).ravel(), minlength=n) / draws
  pi = np.asarray(sj.inclusion_probs(scores, k))
  # Each frequency is a mean of `draws` Bernoulli(pi_i): 5 standard errors (and a floor for
  # pi near 0 or 1) bound all 300 deviations together with high probability.
  bound = 5 * np.sqrt(pi * (1 - pi) / draws) + 1e-4
  assert np.all(np.abs(freq - pi) <= bound), np.max(np.abs(freq - pi) / bound)


@pytest.mark.parametrize("n", [5, 200])  # 200: some items divided out of the whole count
def test_gradients_match_finite_differences(n, rng, x64):
  # Close scores, so that every item's probability depends on every other's.
  scores = jnp.asarray(rng.normal(size=n) * 0.3)
  check_grads(lambda s: sj.inclusion_probs(s, 2), (scores,), order=1, modes=["rev"])


@pytest.mark.slow
def test_finite_and_in_range_at_scale(key):
  n, k = 20_000, 200
  scores = jax.random.normal(key, (n,)) * 3
  pi = sj.inclusion_probs(scores, k)
  assert bool(jnp.all(jnp.isfinite(pi))) and bool(jnp.all((pi >= 0) & (pi <= 1)))
  np.testing.assert_allclose(float(jnp.sum(pi)), k, rtol=1e-3)
