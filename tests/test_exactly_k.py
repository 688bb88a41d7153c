"""The exactly-k family and SIMPLE: enumeration, sampling laws, gradients, scale, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import stats

import subsets_jax as sj
from tests import reference


def _enumerate(logits, k):
  """float64 NumPy: every k-set, its probability, log e_k and the marginals."""
  logits = np.asarray(logits, np.float64)
  sets = list(itertools.combinations(range(len(logits)), k))
  weights = np.array([np.exp(logits[list(s)].sum()) for s in sets])
  total = weights.sum()
  marginals = np.zeros(len(logits))
  for s, w in zip(sets, weights, strict=True):
    marginals[list(s)] += w / total
  return sets, weights / total, np.log(total), marginals


def _pl_set_probs(logits, sets):
  """The Plackett-Luce (Gumbel-top-k) law of the same sets, by enumerating orders."""
  w = np.exp(np.asarray(logits, np.float64))
  return np.array(
    [
      sum(reference.ordered_prob_numpy(w, order) for order in itertools.permutations(s))
      for s in sets
    ]
  )


CASES = [(n, k) for n in (1, 2, 5, 8, 10) for k in range(1, n + 1)]


@pytest.mark.parametrize("n,k", CASES)
def test_log_partition_marginals_and_log_probs_match_enumeration_float64(n, k, rng, x64):
  logits = rng.normal(size=n) * 2
  sets, probs, log_z, marginals = _enumerate(logits, k)
  x = jnp.asarray(logits)
  np.testing.assert_allclose(sj.exactly_k_log_partition(x, k), log_z, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(sj.exactly_k_marginals(x, k), marginals, atol=1e-12)
  idx = jnp.asarray(np.array(sets)[:, ::-1].copy())  # order does not matter
  log_p = sj.exactly_k_log_prob(jnp.broadcast_to(x, (len(sets), n)), idx)
  np.testing.assert_allclose(np.exp(log_p), probs, rtol=1e-10)
  assert abs(float(jnp.sum(jnp.exp(log_p))) - 1) < 1e-12


@pytest.mark.parametrize("n,k", [(6, 1), (6, 3), (9, 4), (9, 9)])
def test_float32_matches_enumeration(n, k, rng):
  logits = rng.normal(size=(3, n)) * 3
  for row in range(3):
    _, _, log_z, marginals = _enumerate(logits[row], k)
    x = jnp.asarray(logits[row], jnp.float32)
    assert abs(float(sj.exactly_k_log_partition(x, k)) - log_z) < 1e-5 * max(1, abs(log_z))
    np.testing.assert_allclose(sj.exactly_k_marginals(x, k), marginals, atol=2e-6)
  # Batch axes give the same as rows one by one.
  batched = sj.exactly_k_marginals(jnp.asarray(logits, jnp.float32), k)
  single = jnp.stack([sj.exactly_k_marginals(jnp.asarray(r, jnp.float32), k) for r in logits])
  np.testing.assert_allclose(batched, single, atol=1e-7)


def _chi_square(counts, probs):
  expected = probs * counts.sum()
  return float(np.sum((counts - expected) ** 2 / expected))


def _set_counts(indices, sets):
  index = {s: i for i, s in enumerate(sets)}
  counts = np.zeros(len(sets))
  for row in np.asarray(indices):
    counts[index[tuple(int(v) for v in row)]] += 1
  return counts


# Weights far from uniform: the exactly-k and Plackett-Luce laws then differ clearly.
_LOGITS = np.log(np.array([1.0, 2.0, 4.0, 8.0, 16.0]))
_NUM_DRAWS = 20_000


@pytest.mark.parametrize("sampler", ["exactly_k_sample", "simple_topk"])
@pytest.mark.parametrize("k", [2, 3])
def test_sampler_follows_the_exactly_k_law_and_not_plackett_luce(sampler, k, key):
  sets, probs, _, _ = _enumerate(_LOGITS, k)
  keys = jax.random.split(key, _NUM_DRAWS)
  x = jnp.asarray(_LOGITS, jnp.float32)
  if sampler == "exactly_k_sample":
    indices = jax.vmap(lambda kk: sj.exactly_k_sample(kk, x, k))(keys)
    assert bool(jnp.all(jnp.diff(indices, axis=-1) > 0)), "indices must ascend"
  else:
    khot = jax.vmap(lambda kk: sj.simple_topk(kk, x, k))(keys)
    assert bool(jnp.all(jnp.sum(khot, -1) == k)) and bool(jnp.all((khot == 0) | (khot == 1)))
    indices = jnp.sort(jax.lax.top_k(khot, k)[1], axis=-1)
  counts = _set_counts(indices, sets)
  # Under the law, the statistic is chi-square with len(sets) - 1 degrees of freedom; a
  # false alarm has probability 1e-4.
  threshold = stats.chi2.ppf(1 - 1e-4, len(sets) - 1)
  assert _chi_square(counts, probs) < threshold
  # Power: the same test, against the Plackett-Luce law of the same sets, rejects.
  assert _chi_square(counts, _pl_set_probs(_LOGITS, sets)) > threshold


@pytest.mark.parametrize("n,k", [(64, 3), (50, 9)])
def test_sampler_inclusion_frequencies_match_the_marginals_across_blocks(n, k, key):
  # n = 64, k = 3: 8 blocks of 8 items, a product tree of depth 3; n = 50, k = 9: 5 blocks
  # of 10, padded to 8 leaves. Excluded items sit inside a block and at a block's edge.
  logits = np.random.default_rng(5).normal(size=n) * 1.5
  logits[[3, 9, n - 1]] = -np.inf
  expected = reference.exactly_k_marginals_numpy(logits[np.isfinite(logits)], k)
  expected = np.insert(expected, [3, 8, n - 3], 0.0)
  x = jnp.asarray(logits, jnp.float32)
  draws = jax.vmap(lambda kk: sj.exactly_k_sample(kk, x, k))(jax.random.split(key, _NUM_DRAWS))
  assert bool(jnp.all(jnp.diff(draws, axis=-1) > 0))
  freq = np.asarray(jax.vmap(lambda d: sj.khot(d, n))(draws).mean(0), np.float64)
  np.testing.assert_array_equal(freq[[3, 9, n - 1]], 0)
  # Each frequency is a mean of _NUM_DRAWS Bernoulli(expected) draws: within z standard
  # errors, z for a false alarm of 1e-4 over all the items (two-sided, Bonferroni).
  z = stats.norm.ppf(1 - 1e-4 / (2 * n))
  se = np.sqrt(expected * (1 - expected) / _NUM_DRAWS)
  assert np.all(np.abs(freq - expected) <= z * se + 1e-12)
  np.testing.assert_allclose(sj.exactly_k_marginals(x, k), expected, atol=2e-6)


def test_simple_forward_is_exactly_k_sample_and_gradient_is_the_marginals_vjp(key, x64):
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 7)))
  khot = sj.simple_topk(key, logits, 3)
  np.testing.assert_array_equal(
    khot, sj.khot(sj.exactly_k_sample(key, logits, 3), 7, dtype=khot.dtype)
  )
  w = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7)))
  ours = jax.grad(lambda x: jnp.sum(w * sj.simple_topk(key, x, 3)))(logits)
  theirs = jax.grad(lambda x: jnp.sum(w * sj.exactly_k_marginals(x, 3)))(logits)
  np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_gradients_match_finite_differences(k, rng, x64):
  x = jnp.asarray(rng.normal(size=(2, 6)))
  idx = jnp.asarray(np.stack([rng.permutation(6)[:k] for _ in range(2)]))
  check_grads(lambda v: sj.exactly_k_log_partition(v, k), (x,), order=2, modes=["rev"])
  check_grads(lambda v: sj.exactly_k_marginals(v, k), (x,), order=1, modes=["rev"])
  check_grads(lambda v: sj.exactly_k_log_prob(v, idx), (x,), order=1, modes=["rev"])


def test_excluded_items_never_sampled_and_get_zero_mass(key):
  x = jnp.array([0.5, -jnp.inf, 1.0, -jnp.inf, 0.0, 2.0])
  m = sj.exactly_k_marginals(x, 3)
  assert float(m[1]) == 0 and float(m[3]) == 0
  np.testing.assert_allclose(float(jnp.sum(m)), 3, rtol=1e-6)
  draws = jax.vmap(lambda kk: sj.exactly_k_sample(kk, x, 3))(jax.random.split(key, 500))
  assert not bool(jnp.any((draws == 1) | (draws == 3)))
  # Exactly k finite items: always those.
  y = jnp.array([-jnp.inf, 1.0, -jnp.inf, 2.0])
  np.testing.assert_array_equal(sj.exactly_k_sample(key, y, 2), [1, 3])
  np.testing.assert_allclose(sj.exactly_k_marginals(y, 2), [0, 1, 0, 1], atol=1e-7)
  assert float(sj.exactly_k_log_prob(y, jnp.array([0, 1]))) == -np.inf


@pytest.mark.slow
@pytest.mark.parametrize("n,k,scale", [(10_000, 1_000, 5.0), (20_000, 300, 100.0)])
def test_stable_at_scale(n, k, scale, key):
  x = jax.random.normal(key, (n,)) * scale
  x = x.at[:50].set(-jnp.inf)
  log_z = sj.exactly_k_log_partition(x, k)
  m = sj.exactly_k_marginals(x, k)
  assert bool(jnp.isfinite(log_z))
  assert bool(jnp.all((m >= 0) & (m <= 1 + 1e-6))) and float(jnp.max(m[:50])) == 0
  np.testing.assert_allclose(float(jnp.sum(m)), k, rtol=1e-4)
  idx = sj.exactly_k_sample(key, x, k)
  assert idx.shape == (k,) and bool(jnp.all(jnp.diff(idx) > 0)) and int(idx.min()) >= 50


@pytest.mark.parametrize(
  "call,error,match",
  [
    (lambda: sj.exactly_k_marginals(jnp.zeros(4), 5), ValueError, "k must satisfy"),
    (lambda: sj.exactly_k_marginals(jnp.zeros(4), 2.0), TypeError, "k must be a Python int"),
    (lambda: sj.exactly_k_marginals(jnp.zeros(4, jnp.int32), 2), TypeError, "logits must be"),
    (lambda: sj.exactly_k_log_partition(jnp.array(1.0), 1), ValueError, "rank >= 1"),
    (lambda: sj.exactly_k_log_prob(jnp.zeros(4), jnp.array([1, 1])), ValueError, "repeat"),
    (lambda: sj.exactly_k_log_prob(jnp.zeros(4), jnp.array([0, 4])), ValueError, r"\[0, n\)"),
    (lambda: sj.exactly_k_log_prob(jnp.zeros((2, 4)), jnp.array([0, 1])), ValueError, "shape"),
    (lambda: sj.exactly_k_sample(None, jnp.zeros(4), 2), TypeError, "key must be a PRNG key"),
    (lambda: sj.simple_topk(jax.random.key(0), jnp.array([0.0, jnp.nan]), 1), ValueError, "NaN"),
    (
      lambda: sj.exactly_k_sample(jax.random.key(0), jnp.array([0.0, -jnp.inf]), 2),
      ValueError,
      "finite entries",
    ),
  ],
)
def test_bad_input_is_rejected_early(call, error, match):
  with pytest.raises(error, match=match):
    call()
