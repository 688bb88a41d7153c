"""Exact log-probabilities of ordered draws and of unordered subsets."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import bisection, validation


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


# Below this y = log x, the first terms of the series in x = exp(y) are exact to rounding in
# float64: log(1 - e^-x) = y - x / 2 + O(x^2), and x / (e^x - 1) = 1 - x / 2 + ... = 1.
_SERIES_BELOW = -20.0


def _log1m_exp_neg_exp(y: jax.Array) -> jax.Array:
  """log(1 - exp(-exp(y))), accurate and with finite gradients for every real y."""
  # Below `_SERIES_BELOW` the series y - exp(y) / 2 holds to rounding, and stays finite where
  # exp(y) underflows. Beyond y = 30, exp(-exp(y)) is 0 in every float type; capping y keeps
  # exp(y) finite, so the backward pass never multiplies an infinite exp(y) by a zero
  # exp(-exp(y)).
  tiny = y < _SERIES_BELOW
  x = jnp.exp(jnp.minimum(y, 30.0))
  return jnp.where(tiny, y - 0.5 * x, jnp.log(-jnp.expm1(-jnp.where(tiny, 1.0, x))))


def _arrival_share(w: jax.Array) -> jax.Array:
  """x / (e^x - 1) with x = exp(w): the slope of `_log1m_exp_neg_exp` at w, in (0, 1]."""
  tiny, large = w < _SERIES_BELOW, w > 4.0  # beyond w = 4 it is below 1e-22
  x = jnp.exp(jnp.where(tiny | large, 0.0, w))
  return jnp.where(tiny, 1.0, jnp.where(large, 0.0, x / jnp.expm1(x)))


def _log_integrand_slope(z: jax.Array, ell: jax.Array) -> jax.Array:
  """d/dz of the log-integrand z - e^z + sum_s log(1 - exp(-e^{z + l_s})), `z` `[...]`."""
  return 1 - jnp.exp(z) + jnp.sum(_arrival_share(ell + z[..., None]), axis=-1)


# Nodes per row, by compute dtype; bisection steps for the mode; the share of the
# integral that may lie left of the nodes.
_NODES = {jnp.dtype(jnp.float32): 32, jnp.dtype(jnp.float64): 96}
_MODE_STEPS = 10
_TAIL = {jnp.dtype(jnp.float32): 1e-9, jnp.dtype(jnp.float64): 1e-18}


def _nodes(ell: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Per-row nodes and log-weights `[..., nodes]`: trapezoids in u, z = z* + sigma sinh u.

  The log-integrand is concave (each of its terms is), its slope at most k + 1 and at
  least 1 - e^z, so its mode z* lies in [0, log(k + 1)] (found by bisection on the slope)
  and sigma = (-curvature at z*)^{-1/2} is its width there, at most 1. Left of
  z_low = log(eps (1 - e^{-(k+1)}) / (k + 1)) - 1 lies at most eps of the integral (the
  slope bound from the left, concavity for the mass near the mode); beyond
  z_high = log(k + 61 + 10 sqrt(k + 1)) the integrand is below e^{-56} of its peak. The
  sinh map puts nodes densely at the peak, whose width shrinks as 1 / sqrt(k) at large k,
  and sparsely in the tails, where the integrand falls at least exponentially.
  """
  dtype = ell.dtype
  count = _NODES[jnp.dtype(dtype)]
  lo = jnp.zeros(ell.shape[:-1], dtype)
  hi = jnp.full(ell.shape[:-1], math.log(k + 1), dtype)
  rising = lambda z: _log_integrand_slope(z, ell) > 0
  lo, hi = bisection.bisect(rising, lo, hi, steps=_MODE_STEPS)
  mode = 0.5 * (lo + hi)
  _, curvature = jax.jvp(lambda z: _log_integrand_slope(z, ell), (mode,), (jnp.ones_like(mode),))
  # The curvature is at most -e^{z*} <= -1; the floor guards rounding.
  sigma = jax.lax.rsqrt(jnp.maximum(-curvature, 1))
  z_low = math.log(_TAIL[jnp.dtype(dtype)] * -math.expm1(-(k + 1)) / (k + 1)) - 1
  z_high = math.log(k + 61 + 10 * math.sqrt(k + 1))
  u_low = -jnp.arcsinh((mode - z_low) / sigma)
  step = (jnp.arcsinh((z_high - mode) / sigma) - u_low) / (count - 1)
  index = jnp.arange(count, dtype=dtype).reshape((1,) * mode.ndim + (count,))
  u = u_low[..., None] + step[..., None] * index
  z = mode[..., None] + sigma[..., None] * jnp.sinh(u)
  log_weight = jnp.log(step * sigma)[..., None] + jnp.log(jnp.cosh(u))
  return z, log_weight


def unordered_subset_log_prob(scores: ArrayLike, indices: ArrayLike) -> jax.Array:
  r"""Log-probability of the set `indices`, summed over the k! draw orders.

  Method: the integral representation of Kool, van Hoof & Welling, "Estimating
  Gradients for Discrete Random Variables by Sampling without Replacement",
  ICLR 2020 (eq. 4): with `w_rest` the total weight outside the set S,

      P(S) = \int_0^1 prod_{s in S} (1 - v^{w_s / w_rest}) dv.

  Substituting `v = exp(-e^z)` turns it into an integral over the real line of
  `exp(z - e^z + sum_s log(1 - exp(-e^{z + l_s})))` with `l_s = scores_s -
  logsumexp(scores_rest)`. Its logarithm is concave, with its mode in `[0, log(k + 1)]`
  and a peak whose width shrinks as `1 / sqrt(k)`: each row finds its mode and width
  (10 bisection steps and one curvature) and integrates by the trapezoidal rule in u,
  `z = mode + width * sinh(u)`, on 32 nodes (96 in float64) from where at most 1e-9
  (1e-18) of the integral lies to the left to where the integrand is below e^-56 of its
  peak; the terms are summed with `logsumexp`, so the result stays accurate in log
  space even for vanishing probabilities.
  Cost: O(n + 42 k) per row (O(n + 106 k) in float64), any k (no k! enumeration).
  P(S) = 1 when S holds every finite-weight item.

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
  excluded = ~jnp.isfinite(ell)
  ell_safe = jnp.where(excluded, 0, ell)
  # The nodes follow the integrand's shape; the gradient flows through the integrand at
  # fixed nodes.
  z, log_weight = _nodes(jax.lax.stop_gradient(ell_safe), k)
  # [..., nodes, k]: log(1 - v^{w_s / w_rest}) at every node.
  factors = _log1m_exp_neg_exp(ell_safe[..., None, :] + z[..., None])
  log_integrand = z - jnp.exp(z) + jnp.sum(factors, axis=-1) + log_weight
  log_p = jax.nn.logsumexp(log_integrand, axis=-1)
  log_p = jnp.where(jnp.any(excluded, axis=-1), neg_inf, log_p)
  log_p = jnp.where(rest_empty[..., 0], 0, log_p)
  # A probability is at most 1; the quadrature can round a hair above it.
  log_p = jnp.minimum(log_p, 0)
  return validation.nan_where(validation.bad_rows(scores)[..., 0], log_p)
