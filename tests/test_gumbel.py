"""Exact sampler: statistics against the Plackett-Luce probabilities, k-hot encoding."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import subsets_jax as sj
from tests import reference

NUM_SAMPLES = 200_000
# Fixed keys make these deterministic; a correct sampler passes a chi-square test at
# this level for all but 1 key in 10^4, a wrong one (see test_chi_square_has_power) fails.
P_VALUE_FLOOR = 1e-4


def _chi_square_p(counts, probs, num):
  expected = np.asarray(probs) * num
  return stats.chisquare(np.asarray(counts), expected).pvalue


def _draw(key, scores, k, num):
  keys = jax.random.split(key, num)
  return np.asarray(jax.jit(jax.vmap(lambda kk: sj.gumbel_topk(kk, scores, k)))(keys))


def test_ordered_draws_match_plackett_luce(key):
  weights = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
  draws = _draw(key, jnp.log(weights), 3, NUM_SAMPLES)
  orders = reference.all_orders(5, 3)
  counts = collections.Counter(map(tuple, draws.tolist()))
  assert set(counts) <= set(orders)
  probs = [reference.ordered_prob_numpy(weights, o) for o in orders]
  assert abs(sum(probs) - 1) < 1e-12
  assert _chi_square_p([counts[o] for o in orders], probs, NUM_SAMPLES) > P_VALUE_FLOOR


def test_unordered_sets_match_unordered_log_prob(key):
  weights = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
  scores = jnp.log(jnp.asarray(weights, jnp.float32))
  draws = _draw(jax.random.fold_in(key, 1), scores, 3, NUM_SAMPLES)
  sets = reference.all_sets(5, 3)
  counts = collections.Counter(tuple(sorted(d)) for d in draws.tolist())
  probs = np.exp(
    np.asarray(
      sj.unordered_subset_log_prob(jnp.broadcast_to(scores, (len(sets), 5)), jnp.array(sets))
    ).astype(np.float64)
  )
  probs = probs / probs.sum()  # remove float32 rounding before the chi-square test
  assert _chi_square_p([counts[s] for s in sets], probs, NUM_SAMPLES) > P_VALUE_FLOOR


def test_chi_square_has_power(key):
  """The test above rejects a plausible wrong sampler: independent top-k of w (no Gumbel order)."""
  weights = np.array([0.05, 0.1, 0.15, 0.3, 0.4])
  # Sampling each draw with probability proportional to w^2 is a different distribution.
  draws = _draw(key, jnp.log(weights**2), 3, NUM_SAMPLES)
  orders = reference.all_orders(5, 3)
  counts = collections.Counter(map(tuple, draws.tolist()))
  probs = [reference.ordered_prob_numpy(weights, o) for o in orders]
  assert _chi_square_p([counts[o] for o in orders], probs, NUM_SAMPLES) < 1e-10


def test_draw_order_is_descending_perturbed_score(key):
  scores = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
  idx = sj.gumbel_topk(key, scores, 4)
  perturbed = scores + sj.gumbel_noise(key, scores)
  assert idx.dtype == jnp.int32
  assert np.all(np.diff(np.asarray(perturbed)[np.asarray(idx)]) < 0)


def test_noise_is_jax_random_gumbel(key):
  scores = jnp.zeros((3, 7), jnp.bfloat16)
  np.testing.assert_array_equal(
    sj.gumbel_noise(key, scores), jax.random.gumbel(key, (3, 7), jnp.float32)
  )


def test_excluded_items_never_drawn(key):
  scores = jnp.array([0.0, -jnp.inf, 1.0, -jnp.inf, 2.0, 0.5])
  draws = _draw(key, scores, 4, 2000)
  assert not np.isin(draws, [1, 3]).any()


def test_batched_and_vmapped_agree(key):
  scores = jax.random.normal(key, (4, 10))
  keys = jax.random.split(key, 4)
  batched = jax.vmap(sj.gumbel_topk, in_axes=(0, 0, None))(keys, scores, 3)
  for i in range(4):
    np.testing.assert_array_equal(batched[i], sj.gumbel_topk(keys[i], scores[i], 3))


@pytest.mark.parametrize("shape,k", [((6,), 2), ((2, 3, 5), 5)])
def test_khot_marks_indices(shape, k, rng):
  n = shape[-1]
  idx = np.stack([rng.permutation(n)[:k] for _ in range(int(np.prod(shape[:-1])))])
  idx = idx.reshape(*shape[:-1], k)
  out = np.asarray(sj.khot(jnp.asarray(idx), n))
  expected = np.zeros(shape)
  np.put_along_axis(expected, idx, 1.0, axis=-1)
  np.testing.assert_array_equal(out, expected)


def test_khot_rejects_bad_input():
  with pytest.raises(ValueError, match="n must"):
    sj.khot(jnp.array([0]), 0)
  with pytest.raises(TypeError, match="indices"):
    sj.khot(jnp.array([0.0]), 3)
  with pytest.raises(ValueError, match=r"\[0, n\)"):
    sj.khot(jnp.array([3]), 3)


@pytest.mark.parametrize(
  "scores,error,match",
  [
    ((2, 3), TypeError, "scores must be an array.*ShapeDtypeStruct.*got tuple"),
    (jnp.zeros((2, 3), jnp.int32), TypeError, "real floating.*int32"),
    (jnp.float32(0.0), ValueError, "rank >= 1"),
  ],
)
def test_gumbel_noise_rejects_bad_scores(key, scores, error, match):
  with pytest.raises(error, match=match):
    sj.gumbel_noise(key, scores)


def test_gumbel_noise_takes_a_shape_dtype_struct(key):
  spec = jax.ShapeDtypeStruct((3, 4), jnp.bfloat16)
  np.testing.assert_array_equal(
    sj.gumbel_noise(key, spec), jax.random.gumbel(key, (3, 4), jnp.float32)
  )


# ------------------------------------------------- the noise is jax.random.gumbel's

_NOISE_KEYS = {
  "typed": lambda: jax.random.key(11),
  "raw": lambda: jax.random.PRNGKey(5),
  "rbg": lambda: jax.random.key(3, impl="rbg"),  # not threefry: JAX's own path
}


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 50), (2, 3, 4), (64, 1000)])
@pytest.mark.parametrize("key_kind", sorted(_NOISE_KEYS))
@pytest.mark.parametrize("jit", [False, True])
def test_gumbel_noise_is_jax_random_gumbel_bit_for_bit(shape, key_kind, jit):
  """On CPU the noise of threefry keys comes from the library's fused hash: same bits."""
  key = _NOISE_KEYS[key_kind]()
  noise = jax.jit(sj.gumbel_noise) if jit else sj.gumbel_noise
  ours = np.asarray(noise(key, jnp.zeros(shape, jnp.bfloat16)))
  theirs = np.asarray(jax.random.gumbel(key, shape, jnp.float32))
  assert ours.dtype == np.float32
  np.testing.assert_array_equal(ours, theirs)


def test_gumbel_noise_float64_and_vmapped_keys_bit_for_bit(x64):
  key = jax.random.key(21)
  ours = sj.gumbel_noise(key, jnp.zeros((5, 300), jnp.float64))
  np.testing.assert_array_equal(ours, jax.random.gumbel(key, (5, 300), jnp.float64))
  keys = jax.random.split(jax.random.key(4), 6)
  ours = jax.vmap(lambda k: sj.gumbel_noise(k, jnp.zeros((40,), jnp.float32)))(keys)
  theirs = jax.vmap(lambda k: jax.random.gumbel(k, (40,), jnp.float32))(keys)
  np.testing.assert_array_equal(ours, theirs)
