"""The continuous relaxation of top-k of Xie & Ermon (IJCAI 2019)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import gumbel, validation

# Below this share of the top item's weight, the other items' total weight is not
# used through `log` (its reciprocal would overflow in the backward pass); the gap
# to the runner-up stands in for log(1 - p_top) instead.
_OTHERS_FLOOR = {jnp.dtype(jnp.float32): 1e-28, jnp.dtype(jnp.float64): 1e-280}


def _relaxation_step(tau, carry, _):
  """One step: p = softmax(b), b <- b + log(1 - p) / tau, in scaled units b = a / tau."""
  b, total, alive = carry
  neg_inf = jnp.array(-jnp.inf, b.dtype)
  m = jnp.max(jnp.where(alive, b, neg_inf), axis=-1, keepdims=True)
  m_safe = jnp.where(jnp.isfinite(m), m, 0)
  # Dead items enter exp as -inf so that neither value nor gradient can overflow.
  e = jnp.exp(jnp.where(alive, b - m_safe, neg_inf))
  s = jnp.sum(e, axis=-1, keepdims=True)
  s_safe = jnp.where(s > 0, s, 1)
  p = e / s_safe

  top = jnp.argmax(jnp.where(alive, b, neg_inf), axis=-1, keepdims=True)
  is_top = jax.lax.broadcasted_iota(top.dtype, b.shape, b.ndim - 1) == top
  # log(1 - p_top) = log(sum of the other weights) - log(total weight): no cancellation,
  # unlike log1p(-p_top) when p_top is close to 1.
  others = jnp.sum(jnp.where(is_top, 0, e), axis=-1, keepdims=True)
  runner_up = jnp.max(jnp.where(is_top | ~alive, neg_inf, b), axis=-1, keepdims=True)
  has_others = jnp.isfinite(runner_up)
  use_log = others > _OTHERS_FLOOR[jnp.dtype(b.dtype)]
  log_others = jnp.where(
    use_log,
    jnp.log(jnp.where(use_log, others, 1)),
    jnp.where(has_others, runner_up, m_safe) - m_safe,
  )
  log1m_top = log_others - jnp.log(s_safe)
  # Non-top items have p <= 1/2, where log1p(-p) is accurate.
  log1m_p = jnp.where(is_top, log1m_top, jnp.log1p(-jnp.where(is_top, 0, p)))
  b_next = b + log1m_p / tau
  # With no other item left, the top item is used up: it takes no further mass.
  alive_next = alive & ~(is_top & ~has_others)
  return (b_next, total + p, alive_next), None


def _soft_topk_core(scores: jax.Array, k: int, tau: jax.Array) -> jax.Array:
  """`soft_topk` on validated input already in the compute dtype."""
  alive = jnp.isfinite(scores)
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  row_max = jnp.max(jnp.where(alive, scores, neg_inf), axis=-1, keepdims=True)
  # The relaxation is invariant to a per-row shift; shifting by the maximum before
  # dividing by tau keeps exp in range at any score scale.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0))
  b = jnp.where(alive, scores - row_max, 0) / tau
  init = (b, jnp.zeros_like(b), alive)
  (_, total, _), _ = jax.lax.scan(functools.partial(_relaxation_step, tau), init, None, length=k)
  return total


def _prepare(scores, k, tau):
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  validation.check_tau(tau)
  validation.check_enough_finite(scores, k)
  dtype = validation.compute_dtype(scores.dtype)
  return scores, k, jnp.asarray(tau, dtype)


def soft_topk(scores: ArrayLike, k: int, tau: ArrayLike = 1.0) -> jax.Array:
  r"""Relaxed k-hot vector of the top `k` scores (no noise).

  The recursion of Xie & Ermon, "Reparameterizable Subset Sampling via
  Continuous Relaxations", IJCAI 2019 (arXiv:1901.10517), Algorithm 2:

      a^1 = scores
      p^j = softmax(a^j / tau)                   j = 1, ..., k
      a^{j+1} = a^j + log(1 - p^j)
      output = sum_j p^j

  It runs as a `lax.scan` over the `k` steps carrying the running sum, O(k n)
  time and O(n) state per row (reverse-mode autodiff stores each step).

  Numerics: each row is shifted by its maximum before dividing by `tau`, so any
  score scale works. `log(1 - p)` is computed without clamping: `log1p(-p)` for
  every item but the current top one (whose `p <= 1/2`), and for the top one
  `log(sum of the other weights) - log(sum of all weights)`. When the other
  weights sum to less than 1e-28 (float32; 1e-280 in float64) of the top one's,
  the log-gap to the runner-up stands in for `log(1 - p_top)` (a difference of
  at most log n, in a regime where the top item is already taken). The seed's
  PyTorch code instead clamps `1 - p` at float32's `tiny` (`log(1 - p) >= -87`),
  which lets an item be taken twice when score ranges exceed about 87 and tau is
  small. Half-precision inputs are computed in float32, float64 in float64; the
  result has the input dtype.

  Properties: entries are >= 0 and sum to `k`; as `tau -> 0` the output tends
  to the exact k-hot of the top `k` scores. For `tau` not small compared with
  the score gaps, entries can exceed 1 (e.g. `soft_topk([0., 10.], 2)` gives
  about `[0.5, 1.5]`): it is a relaxation, not a probability of inclusion.

  Excluded items: `-inf` scores get exactly zero mass. Concrete scores with
  fewer than `k` finite entries in a row are rejected; under `jit` such a row
  recycles its mass over its finite entries (a single finite entry gets 1,
  a row with none gets zeros).

  Args:
    scores: `[..., n]` real floating scores; leading axes are batch axes.
    k: subset size, a Python int with `1 <= k <= n` (static under jit).
    tau: temperature, a scalar > 0; may be a traced array (changing it does
      not recompile a jitted caller).

  Returns:
    `[..., n]` relaxed k-hot vector in the dtype of `scores`.

  Raises:
    TypeError: non-float `scores`, non-int `k`, or non-real `tau`.
    ValueError: `k` outside `[1, n]`; concrete `tau` not finite and > 0;
      concrete `scores` with NaN, `+inf` or fewer than `k` finite entries.

  Example:
    >>> import jax.numpy as jnp
    >>> y = soft_topk(jnp.array([1., 2., 3., 4.]), 2, tau=0.1)
    >>> [round(float(v), 3) for v in y]
    [0.0, 0.0, 1.0, 1.0]
  """
  scores, k, tau = _prepare(scores, k, tau)
  dtype = validation.compute_dtype(scores.dtype)
  return _soft_topk_core(scores.astype(dtype), k, tau).astype(scores.dtype)


def gumbel_topk_relaxed(
  key: ArrayLike,
  scores: ArrayLike,
  k: int,
  tau: ArrayLike = 1.0,
  *,
  hard: bool = False,
) -> jax.Array:
  """Reparameterised relaxed sample of a k-subset (Xie & Ermon, IJCAI 2019).

  Returns `soft_topk(scores + g, k, tau)` where `g` is the key's Gumbel noise,
  `jax.random.gumbel(key, scores.shape, float32)` (float64 for float64 scores),
  the same noise as `gumbel_topk(key, scores, k)`.

  With `hard=True` (straight-through) the forward value is exactly
  `khot(gumbel_topk(key, scores, k), n)`, an exact sample from the
  without-replacement distribution, and the gradient is that of the relaxed
  output. (The seed's PyTorch code takes the top-k of the relaxed vector
  instead, which is not an exact sample.)

  Args:
    key: a PRNG key.
    scores: `[..., n]` unnormalised log-weights (`log w_i`); `-inf` excludes.
    k: subset size, a Python int with `1 <= k <= n`.
    tau: temperature > 0, a scalar that may be traced.
    hard: straight-through k-hot forward value.

  Returns:
    `[..., n]` in the dtype of `scores`: relaxed k-hot, or exact k-hot when `hard`.

  Raises:
    Same as `soft_topk`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> s = jnp.log(jnp.array([.1, .2, .3, .4]))
    >>> y = gumbel_topk_relaxed(jax.random.key(0), s, 2, tau=0.5)
    >>> round(float(y.sum()), 4)
    2.0
    >>> h = gumbel_topk_relaxed(jax.random.key(0), s, 2, tau=0.5, hard=True)
    >>> sorted(set(h.tolist()))
    [0.0, 1.0]
  """
  scores, k, tau = _prepare(scores, k, tau)
  if not isinstance(hard, bool):
    raise TypeError(f"hard must be a bool; got {type(hard).__name__}.")
  perturbed = gumbel.perturb(key, scores)
  soft = _soft_topk_core(perturbed, k, tau)
  if hard:
    _, indices = jax.lax.top_k(perturbed, k)
    exact = gumbel.khot(indices, scores.shape[-1], dtype=soft.dtype)
    # x - x is exactly 0 for finite x, so the forward value stays exactly k-hot.
    soft = exact + (soft - jax.lax.stop_gradient(soft))
  return soft.astype(scores.dtype)
