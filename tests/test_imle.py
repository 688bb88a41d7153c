"""I-MLE: the sum-of-gamma noise's law, the MAP forward, the finite-difference backward."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import subsets_jax as sj
from subsets_jax._src import imle

# One shape (with leading batch axes) and k for most tests below: every compilation of the
# gamma sampler is slow.
_SHAPE, _K = (2, 3, 8), 3


def _map_numpy(theta, k):
  """k-hot of the k largest entries of each row, by a float64 NumPy argsort."""
  theta = np.asarray(theta, np.float64)
  top = np.argsort(-theta, axis=-1, kind="stable")[..., :k]
  out = np.zeros(theta.shape)
  np.put_along_axis(out, top, 1.0, axis=-1)
  return out


def _distinct_rows(rng, shape, spread=1.0):
  """Random rows whose entries are pairwise at least 1e-3 apart (no near-ties)."""
  x = rng.normal(size=shape) * spread
  gaps = np.diff(np.sort(x, axis=-1), axis=-1)
  assert gaps.min() > 1e-3, "regenerate: near-tie"
  return x


# ----------------------------------------------------------------------------- the noise

_N = 50_000  # draws of each k-fold sum
_KS_ALPHA = 1e-3


@pytest.fixture(scope="module")
def gamma_sums():
  """For each k: N draws of the sum of k independent copies of the noise (float64 sums)."""
  out = {}
  for k in (1, 2, 5, 10):
    shape = jax.ShapeDtypeStruct((k, _N), jnp.float32)
    eps = sj.sum_of_gamma_noise(jax.random.key(10 + k), shape, k)
    assert eps.shape == (k, _N) and eps.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(eps)))
    out[k] = np.asarray(eps, np.float64).sum(axis=0)
  return out


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_k_copies_sum_to_a_standard_gumbel(k, gamma_sums):
  s = gamma_sums[k]
  assert stats.kstest(s, stats.gumbel_r.cdf).pvalue > _KS_ALPHA
  # Mean and variance within 5 standard errors of the Gumbel's gamma and pi^2 / 6. The
  # variance's standard error uses the Gumbel's fourth central moment, mu4 = (27/5) var^2
  # (excess kurtosis 12/5).
  var = math.pi**2 / 6
  assert abs(s.mean() - np.euler_gamma) < 5 * math.sqrt(var / _N)
  se_var = math.sqrt((27 / 5 * var**2 - var**2) / _N)
  assert abs(s.var(ddof=1) - var) < 5 * se_var


def test_the_ks_test_rejects_a_wrong_construction(gamma_sums):
  # Power: the same test, on the same draws scaled by 1.05 (a Gumbel of scale 1.05, whose
  # CDF is up to about 0.013 from the standard one), rejects. Pooled over the four k the
  # sample has 200,000 draws, so the expected KS statistic times sqrt(N) is about 5.8,
  # far past the 1e-3 critical value of about 1.95.
  pooled = np.concatenate([gamma_sums[k] for k in (1, 2, 5, 10)])
  assert stats.kstest(pooled, stats.gumbel_r.cdf).pvalue > _KS_ALPHA
  assert stats.kstest(1.05 * pooled, stats.gumbel_r.cdf).pvalue < _KS_ALPHA
  # A shift by a tenth of a standard deviation is rejected as well.
  assert stats.kstest(pooled + 0.13, stats.gumbel_r.cdf).pvalue < _KS_ALPHA


@pytest.mark.parametrize("alpha", [1.1, 11.0])
@pytest.mark.parametrize("buffer", [None, 16])
def test_the_gamma_sampler_draws_gamma_variables(alpha, buffer, key):
  # buffer 16 holds far fewer slots than the about 1,000 first-round rejections of 20,000
  # draws, so the redraws run over many rounds of the outer loop.
  draws = np.asarray(
    imle._gamma_at_least_one(key, alpha, (100, 200), jnp.float32, buffer=buffer), np.float64
  ).ravel()
  assert np.all(draws > 0)
  assert stats.kstest(draws, stats.gamma(alpha).cdf).pvalue > _KS_ALPHA
  # Power: the same draws scaled by 1.1 (a Gamma of scale 1.1) are rejected.
  assert stats.kstest(draws * 1.1, stats.gamma(alpha).cdf).pvalue < _KS_ALPHA


def test_noise_shape_dtype_and_determinism(key, x64):
  eps = sj.sum_of_gamma_noise(key, jnp.zeros(_SHAPE), _K)
  assert eps.shape == _SHAPE and eps.dtype == jnp.float64
  np.testing.assert_array_equal(eps, sj.sum_of_gamma_noise(key, jnp.zeros(_SHAPE), _K))
  other = sj.sum_of_gamma_noise(jax.random.key(1), jnp.zeros(_SHAPE), _K)
  assert not np.array_equal(np.asarray(eps), np.asarray(other))


@pytest.mark.parametrize("k,terms", [(0, 10), (2, 0), (2.0, 10), (2, 1.5)])
def test_noise_bad_counts_are_rejected(k, terms, key):
  with pytest.raises(ValueError, match="must be a Python int >= 1"):
    sj.sum_of_gamma_noise(key, jnp.zeros(4), k, terms=terms)


# ------------------------------------------------------------------------ forward / backward


@functools.partial(jax.jit, static_argnames=("k",))
def _value_and_grad(key, theta, c, lam, temperature, *, k):
  """The forward z and the gradient of c . z under jit, lam and noise_temperature traced."""
  f = lambda t: sj.imle_topk(key, t, k, lam=lam, noise_temperature=temperature)
  z, vjp = jax.vjp(f, theta)
  return z, vjp(c)[0]


@pytest.mark.parametrize("lam", [0.5, 4.0, 100.0])
def test_noise_free_forward_and_gradient_match_numpy(lam, rng, key, x64):
  k = _K
  theta = _distinct_rows(rng, _SHAPE)
  c = _distinct_rows(rng, _SHAPE, spread=0.5)
  z, grad = _value_and_grad(key, jnp.asarray(theta), jnp.asarray(c), lam, 0.0, k=k)
  np.testing.assert_array_equal(z, _map_numpy(theta, k))
  expected = (_map_numpy(theta, k) - _map_numpy(theta - lam * c, k)) / lam
  np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=0)
  if lam == 100.0:
    # Guards the comparison: with a large lam the target MAP differs from the forward.
    assert np.abs(expected).max() > 0


@pytest.mark.parametrize("lam", [0.3, 10.0])
def test_noisy_gradient_matches_numpy_with_the_same_noise(lam, rng, key, x64):
  theta = _distinct_rows(rng, _SHAPE)
  c = _distinct_rows(rng, _SHAPE)
  eps = np.asarray(sj.sum_of_gamma_noise(key, jnp.asarray(theta), _K))
  z, grad = _value_and_grad(key, jnp.asarray(theta), jnp.asarray(c), lam, 1.0, k=_K)
  np.testing.assert_array_equal(z, _map_numpy(theta + eps, _K))
  expected = (np.asarray(z) - _map_numpy(theta + eps - lam * c, _K)) / lam
  np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=0)
  assert np.abs(expected).max() > 0


@pytest.mark.parametrize("t", [0.25, 3.0])
def test_noise_temperature_scales_the_noise(t, rng, key, x64):
  theta = _distinct_rows(rng, _SHAPE)
  eps = np.asarray(sj.sum_of_gamma_noise(key, jnp.asarray(theta), _K))
  z, _ = _value_and_grad(key, jnp.asarray(theta), jnp.zeros(_SHAPE), 1.0, t, k=_K)
  np.testing.assert_array_equal(z, _map_numpy(theta + t * eps, _K))
  if t == 3.0:  # the noise matters: some row's MAP state changes
    assert not np.array_equal(np.asarray(z), _map_numpy(theta, _K))


def test_excluded_item_gradient_is_zero_and_finite(rng, key, x64):
  theta = _distinct_rows(rng, _SHAPE)
  theta[..., 2] = -np.inf
  theta[1, 0, 5] = -np.inf
  # A cotangent that strongly favours the excluded items in the target MAP state.
  c = np.where(np.isfinite(theta), 1.0, -100.0)
  z, grad = _value_and_grad(key, jnp.asarray(theta), jnp.asarray(c), 10.0, 1.0, k=_K)
  assert float(jnp.max(z[..., 2])) == 0 and float(z[1, 0, 5]) == 0
  np.testing.assert_array_equal(jnp.sum(z, axis=-1), _K)
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.max(jnp.abs(grad[..., 2]))) == 0 and float(grad[1, 0, 5]) == 0


def test_forward_draws_its_noise_as_sum_of_gamma_noise(rng, key, x64):
  logits = jnp.asarray(_distinct_rows(rng, _SHAPE))
  eps = sj.sum_of_gamma_noise(key, logits, _K)
  z = sj.imle_topk(key, logits, _K)
  assert z.shape == _SHAPE and z.dtype == jnp.float64
  expected = _map_numpy(np.asarray(logits) + np.asarray(eps), _K)
  assert bool(jnp.allclose(z, expected))
  np.testing.assert_array_equal(jnp.sum(z, axis=-1), _K)
  # Eager and jit (the helper) agree.
  np.testing.assert_array_equal(z, _value_and_grad(key, logits, logits, 10.0, 1.0, k=_K)[0])


def test_equal_logits_select_every_item_equally_often_and_never_excluded_ones(key):
  n, k, draws = 8, 2, 20_000
  logits = jnp.zeros(n).at[jnp.array([1, 6])].set(-jnp.inf)
  keys = jax.random.split(key, draws)
  z = jax.vmap(lambda kk: sj.imle_topk(kk, logits, k, noise_temperature=5.0))(keys)
  assert z.shape == (draws, n)
  assert bool(jnp.all((z == 0) | (z == 1)))
  np.testing.assert_array_equal(jnp.sum(z, axis=-1), k)
  freq = np.asarray(jnp.mean(z, axis=0), np.float64)
  assert freq[1] == 0 and freq[6] == 0
  p = k / (n - 2)  # the finite items are exchangeable
  live = np.delete(freq, [1, 6])
  assert np.all(np.abs(live - p) < 5 * math.sqrt(p * (1 - p) / draws)), freq


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({"lam": 0.0}, ValueError, "lam must be finite and > 0"),
    ({"lam": -1.0}, ValueError, "lam must be finite and > 0"),
    ({"lam": float("inf")}, ValueError, "lam must be finite and > 0"),
    ({"lam": "a"}, TypeError, "lam must be a real scalar"),
    ({"noise_temperature": -1.0}, ValueError, "noise_temperature must be finite and >= 0"),
    ({"noise_temperature": float("nan")}, ValueError, "noise_temperature must be finite"),
    ({"terms": 0}, ValueError, "terms must be a Python int >= 1"),
    ({"k": 5}, ValueError, "k must satisfy"),
    ({"k": 0}, ValueError, "k must satisfy"),
  ],
)
def test_bad_input_is_rejected(kwargs, error, match, key):
  kwargs = {"k": 2, **kwargs}
  k = kwargs.pop("k")
  with pytest.raises(error, match=match):
    sj.imle_topk(key, jnp.zeros(4), k, **kwargs)
