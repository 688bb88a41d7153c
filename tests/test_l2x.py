"""`l2x_relaxed`: a NumPy reference on the same Gumbel noise, ranges, the tau -> 0 limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import subsets_jax as sj


def _noise(key, logits, k):
  """The `[..., k, n]` Gumbel noise that `l2x_relaxed` documents for `key`."""
  logits = jnp.asarray(logits)
  draws = jnp.broadcast_to(logits[..., None, :], (*logits.shape[:-1], k, logits.shape[-1]))
  return np.asarray(sj.gumbel_noise(key, draws), np.float64)


def _l2x_numpy(logits, g, tau):
  """float64 NumPy: max over the k draws of softmax((logits + g_j) / tau)."""
  z = (np.asarray(logits, np.float64)[..., None, :] + g) / tau  # [..., k, n]; -inf stays -inf
  z = z - z.max(axis=-1, keepdims=True)
  w = np.exp(z)
  return (w / w.sum(axis=-1, keepdims=True)).max(axis=-2)


def _logits(rng, shape, dtype):
  x = rng.normal(size=shape) * 2
  x[(0,) * (len(shape) - 1) + (1,)] = -np.inf  # an excluded item in the first row
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_matches_numpy_on_the_same_noise_float32(k, tau, rng, key):
  logits = _logits(rng, (4, 7), jnp.float32)
  out = sj.l2x_relaxed(key, logits, k, tau)
  assert out.shape == (4, 7) and out.dtype == jnp.float32
  expected = _l2x_numpy(logits, _noise(key, logits, k), tau)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_numpy_on_the_same_noise_float64_batched(k, tau, rng, key, x64):
  logits = _logits(rng, (2, 3, 5), jnp.float64).at[1, 2, 4].set(-jnp.inf)
  out = sj.l2x_relaxed(key, logits, k, tau)
  assert out.shape == (2, 3, 5) and out.dtype == jnp.float64
  expected = _l2x_numpy(logits, _noise(key, logits, k), tau)
  np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
  if k > 1:
    # The maximum over draws matters: it differs from the first draw's softmax alone.
    single = _l2x_numpy(logits, _noise(key, logits, k)[..., :1, :], tau)
    assert np.abs(expected - single).max() > 1e-3


@pytest.mark.parametrize("k", [1, 2, 5])
def test_range_row_sums_and_excluded_items(k, rng, key):
  x = rng.normal(size=(64, 8)) * 3
  x[:, 3] = -np.inf
  x[::2, 6] = -np.inf
  out = np.asarray(sj.l2x_relaxed(key, jnp.asarray(x, jnp.float32), k, 0.3), np.float64)
  assert np.all((out >= 0) & (out <= 1))
  sums = out.sum(axis=-1)
  assert np.all(sums >= 1 - 1e-6) and np.all(sums <= k + 1e-6)
  assert np.all(out[:, 3] == 0) and np.all(out[::2, 6] == 0)
  if k == 1:
    np.testing.assert_allclose(sums, 1, rtol=1e-6)  # a single softmax
  else:
    assert sums.max() > 1 + 1e-2  # distinct draws add mass


def test_gradient_is_finite_and_matches_finite_differences(rng, key, x64):
  x = jnp.asarray(rng.normal(size=(2, 6))).at[0, 4].set(-jnp.inf)
  grad = jax.grad(lambda v: jnp.sum(jnp.arange(6.0)[None] * sj.l2x_relaxed(key, v, 3, 0.5)))(x)
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(grad[0, 4]) == 0
  finite = jnp.asarray(rng.normal(size=(2, 6)))
  check_grads(lambda v: sj.l2x_relaxed(key, v, 3, 0.5), (finite,), order=1, modes=["rev"])
  # ... and in tau (traced).
  check_grads(
    lambda t: sj.l2x_relaxed(key, finite, 3, t), (jnp.asarray(0.5),), order=1, modes=["rev"]
  )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_small_tau_gives_the_union_of_the_draws_argmaxes(k, rng, key, x64):
  tau = 1e-3
  logits = _logits(rng, (16, 7), jnp.float64)
  g = _noise(key, logits, k)
  perturbed = np.asarray(logits)[..., None, :] + g  # [16, k, 7]
  winners = perturbed.argmax(axis=-1)  # [16, k]
  expected = np.zeros((16, 7))
  np.put_along_axis(expected, winners, 1.0, axis=-1)
  # Each softmax misses one-hot by at most (n - 1) exp(-gap / tau), gap its draw's margin:
  # a bound per row from the row's smallest margin.
  top2 = np.sort(perturbed, axis=-1)[..., -2:]
  bound = 6 * np.exp(-(top2[..., 1] - top2[..., 0]).min(axis=-1) / tau)  # [16]
  assert np.sum(bound < 1e-3) >= 12, "regenerate: too many near-ties"
  out = np.asarray(sj.l2x_relaxed(key, logits, k, tau))
  assert np.all(np.abs(out - expected) <= bound[:, None] + 1e-12)
  if k > 1:
    # Some row's draws pick several distinct items.
    assert expected.sum(axis=-1).max() > 1


@pytest.mark.parametrize(
  "k,tau,error,match",
  [
    (2, 0.0, ValueError, "tau must be finite and > 0"),
    (2, -0.5, ValueError, "tau must be finite and > 0"),
    (2, float("inf"), ValueError, "tau must be finite and > 0"),
    (0, 0.1, ValueError, "k must satisfy"),
    (5, 0.1, ValueError, "k must satisfy"),
    (2.0, 0.1, TypeError, "k must be a Python int"),
  ],
)
def test_bad_input_is_rejected(k, tau, error, match, key):
  with pytest.raises(error, match=match):
    sj.l2x_relaxed(key, jnp.zeros(4), k, tau)
