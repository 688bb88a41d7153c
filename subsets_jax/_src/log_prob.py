"""Exact log-probabilities of ordered draws and of unordered subsets."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import validation


def subset_log_prob(scores: ArrayLike, indices: ArrayLike) -> jax.Array:
  """Log-probability of drawing `indices`, in that order, without replacement.

  With weights `w = exp(scores)` and `Z = sum_i w_i`,

      log P(i_1, ..., i_k) = sum_j [ scores_{i_j} - log(Z - sum_{l<j} w_{i_l}) ].

  Each normaliser is a `logsumexp` over the items not yet drawn (a `lax.scan`
  over the k draws carrying the mask), O(k n) per row and free of the
  cancellation in `Z - sum w`.

  Args:
    scores: `[..., n]` real floating log-weights.
    indices: integer `[..., k]` with the same leading shape, distinct in `[0, n)`.

  Returns:
    `[...]` log-probabilities in the compute dtype (float32, or float64); NaN for a
    row with traced NaN or `+inf` scores.

  Raises:
    TypeError: non-floating `scores` or non-integer `indices`.
    ValueError: `indices` not of shape `scores.shape[:-1] + (k,)` with `1 <= k <= n`;
      concrete `scores` with NaN or `+inf`; concrete `indices` outside `[0, n)` or
      repeated within a row.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> s = jnp.log(jnp.array([.1, .2, .3, .4]))
    >>> round(float(jnp.exp(sj.subset_log_prob(s, jnp.array([3, 2])))), 4)  # .4 * .3 / .6
    0.2

  References:
    Luce, "Individual Choice Behavior", 1959; Plackett, "The Analysis of Permutations",
    Applied Statistics 24(2), 1975.
  """
  scores = validation.check_scores(scores)
  indices = validation.check_indices(indices, scores)
  return _subset_log_prob(scores, indices)


@jax.jit
def _subset_log_prob(scores, indices):
  scores = scores.astype(validation.compute_dtype(scores.dtype))
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  item = jax.lax.broadcasted_iota(indices.dtype, scores.shape, scores.ndim - 1)

  def draw(taken, index):
    # `index` is `[...]`: this draw's item in every row.
    remaining = jnp.where(taken, neg_inf, scores)
    log_norm = jax.nn.logsumexp(remaining, axis=-1)
    chosen = jnp.take_along_axis(scores, index[..., None], axis=-1)[..., 0]
    return taken | (item == index[..., None]), chosen - log_norm

  taken0 = jnp.zeros(scores.shape, bool)
  _, terms = jax.lax.scan(draw, taken0, jnp.moveaxis(indices, -1, 0))
  return validation.nan_where(validation.bad_rows(scores)[..., 0], jnp.sum(terms, axis=0))


def _log1m_exp_neg_exp(y: jax.Array) -> jax.Array:
  """log(1 - exp(-exp(y))), accurate and with finite gradients for every real y."""
  # Three regimes of x = exp(y): tiny (series), moderate (expm1), large (log1p).
  tiny = y < -20.0
  large = y > math.log(math.log(2.0))
  y_mid = jnp.where(tiny | large, -1.0, y)
  mid = jnp.log(-jnp.expm1(-jnp.exp(y_mid)))
  # Beyond y = 30, exp(-exp(y)) is 0 in every float type; capping y keeps exp(y) finite, so
  # the backward pass never multiplies an infinite exp(y) by a zero exp(-exp(y)).
  y_large = jnp.where(large, jnp.minimum(y, 30.0), 0.0)
  large_val = jnp.log1p(-jnp.exp(-jnp.exp(y_large)))
  y_tiny = jnp.where(tiny, y, -30.0)
  tiny_val = y_tiny - 0.5 * jnp.exp(y_tiny)
  return jnp.where(tiny, tiny_val, jnp.where(large, large_val, mid))


_QUADRATURE_POINTS = 256
_Z_LOW = -60.0


def unordered_subset_log_prob(scores: ArrayLike, indices: ArrayLike) -> jax.Array:
  r"""Log-probability of the set `indices`, summed over the k! draw orders.

  Method: the integral representation of Kool, van Hoof & Welling, "Estimating
  Gradients for Discrete Random Variables by Sampling without Replacement",
  ICLR 2020 (eq. 4): with `w_rest` the total weight outside the set S,

      P(S) = \int_0^1 prod_{s in S} (1 - v^{w_s / w_rest}) dv.

  Substituting `v = exp(-e^z)` turns it into an integral over the real line of
  `exp(z - e^z + sum_s log(1 - exp(-e^{z + l_s})))` with `l_s = scores_s -
  logsumexp(scores_rest)`; the integrand is smooth and decays
  (doubly-)exponentially at both ends, where the trapezoidal rule converges
  geometrically (its error falls as exp(-2 pi d / h) for node spacing h and a strip of
  analyticity of half-width d near pi / 2). We use 256 equally spaced nodes (h = 1/4) on
  `z in [-60, log(k + 61 + 10 sqrt(k + 1))]`, summed with `logsumexp`, so the
  result stays accurate in log space even for vanishing probabilities.
  Cost: O(n + 256 k) per row, any k (no k! enumeration). It agrees with
  enumeration to 1e-4 relative for k <= 6 (tested); P(S) = 1 when S holds
  every finite-weight item.

  Args:
    scores: `[..., n]` real floating log-weights.
    indices: integer `[..., k]` with the same leading shape, distinct in `[0, n)`;
      their order does not matter.

  Returns:
    `[...]` log-probabilities in the compute dtype (float32, or float64).

  Raises:
    Same as `subset_log_prob`.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> s = jnp.log(jnp.array([.1, .2, .3, .4]))
    >>> p = jnp.exp(sj.unordered_subset_log_prob(s, jnp.array([3, 2])))
    >>> round(float(p), 4)  # .4*.3/.6 + .3*.4/.7
    0.3714

  References:
    Kool, van Hoof & Welling, "Estimating Gradients for Discrete Random Variables by
    Sampling without Replacement", ICLR 2020.
  """
  scores = validation.check_scores(scores)
  indices = validation.check_indices(indices, scores)
  return _unordered_subset_log_prob(scores, indices)


@jax.jit
def _unordered_subset_log_prob(scores, indices):
  return unordered_log_prob_core(scores.astype(validation.compute_dtype(scores.dtype)), indices)


def unordered_log_prob_core(scores: jax.Array, indices: jax.Array) -> jax.Array:
  """`unordered_subset_log_prob` of checked arguments, scores in the compute dtype."""
  k = indices.shape[-1]
  item = jax.lax.broadcasted_iota(indices.dtype, scores.shape, scores.ndim - 1)
  in_set = jnp.any(indices[..., :, None] == item[..., None, :], axis=-2)
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  log_rest = jax.nn.logsumexp(jnp.where(in_set, neg_inf, scores), axis=-1, keepdims=True)
  rest_empty = ~jnp.isfinite(log_rest)
  chosen = jnp.take_along_axis(scores, indices, axis=-1)
  # l_s = log(w_s / w_rest); rows whose rest has no weight are P(S) = 1, set below.
  ell = chosen - jnp.where(rest_empty, 0, log_rest)

  z_high = math.log(k + 61 + 10 * math.sqrt(k + 1))
  z = jnp.linspace(_Z_LOW, z_high, _QUADRATURE_POINTS, dtype=scores.dtype)
  z = z.reshape((1,) * (scores.ndim - 1) + (_QUADRATURE_POINTS,))
  step = (z_high - _Z_LOW) / (_QUADRATURE_POINTS - 1)
  excluded = ~jnp.isfinite(ell)
  ell_safe = jnp.where(excluded, 0, ell)
  # [..., nodes, k]: log(1 - v^{w_s / w_rest}) at every node.
  factors = _log1m_exp_neg_exp(ell_safe[..., None, :] + z[..., None])
  log_integrand = z - jnp.exp(z) + jnp.sum(factors, axis=-1)
  log_p = jax.nn.logsumexp(log_integrand, axis=-1) + math.log(step)
  log_p = jnp.where(jnp.any(excluded, axis=-1), neg_inf, log_p)
  log_p = jnp.where(rest_empty[..., 0], 0, log_p)
  # A probability is at most 1; the quadrature can round a hair above it.
  log_p = jnp.minimum(log_p, 0)
  return validation.nan_where(validation.bad_rows(scores)[..., 0], log_p)
