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


def _step(b: jax.Array, tau: jax.Array):
  """One step in scaled units `b = a / tau`: p = softmax(b), b <- b + log(1 - p) / tau.

  Excluded items are `b = -inf` and stay so. Returns `(b_next, p)`.
  """
  neg_inf = jnp.array(-jnp.inf, b.dtype)
  m = jnp.max(b, axis=-1, keepdims=True)
  m_safe = jnp.where(jnp.isfinite(m), m, 0)
  e = jnp.exp(b - m_safe)
  s = jnp.sum(e, axis=-1, keepdims=True)
  s_safe = jnp.where(s > 0, s, 1)
  p = e / s_safe
  # Only a unique maximum can have p > 1/2, and there log1p(-p) would cancel: use
  # log(1 - p_top) = log(sum of the other weights) - log(total weight) instead. (An
  # argmax would single out the top item too, but is several times slower on CPU.)
  is_max = b == m
  others = jnp.sum(jnp.where(is_max, 0, e), axis=-1, keepdims=True)
  runner_up = jnp.max(jnp.where(is_max, neg_inf, b), axis=-1, keepdims=True)
  use_log = others > _OTHERS_FLOOR[jnp.dtype(b.dtype)]
  log_others = jnp.where(
    use_log,
    jnp.log(jnp.where(use_log, others, 1)),
    # Others below the floor: the log-gap to the runner-up; no other finite item: 0, so a
    # lone finite item keeps receiving the mass rather than turning into NaN.
    jnp.where(jnp.isfinite(runner_up), runner_up - m_safe, 0),
  )
  dominant = p > 0.5
  log1m_p = jnp.where(dominant, log_others - jnp.log(s_safe), jnp.log1p(-jnp.where(dominant, 0, p)))
  return b + log1m_p / tau, p


def _recursion_scan(b0, tau, k):
  """Sum of the k softmaxes; plain `lax.scan`, differentiable in every mode."""

  def body(carry, _):
    b, total = carry
    b, p = _step(b, tau)
    return (b, total + p), None

  (_, total), _ = jax.lax.scan(body, (b0, jnp.zeros_like(b0)), None, length=k)
  return total


# The recompute VJP stores at most this many [..., n] states, whatever k is.
_MAX_STORED_STATES = 16


def _segments(k: int) -> tuple[int, int]:
  """(segment length L, number of segments S): S <= _MAX_STORED_STATES, S * L >= k."""
  length = -(-k // _MAX_STORED_STATES)
  return length, -(-k // length)


def _recursion_fwd(b0, tau, k):
  length, count = _segments(k)
  ragged = length * count != k

  def segment(carry, seg):
    checkpoint = carry[0]

    def inner(carry, offset):
      b, total = carry
      b_next, p = _step(b, tau)
      if ragged:  # steps past k in the last segment leave the state untouched
        active = seg * length + offset < k
        b_next = jnp.where(active, b_next, b)
        p = jnp.where(active, p, 0)
      return (b_next, total + p), None

    carry, _ = jax.lax.scan(inner, carry, jnp.arange(length))
    return carry, checkpoint

  (_, total), checkpoints = jax.lax.scan(segment, (b0, jnp.zeros_like(b0)), jnp.arange(count))
  return total, (checkpoints, tau)


def _recursion_bwd(k, residuals, total_bar):
  b_saved, tau = residuals
  length, count = _segments(k)

  def advance(_, b):
    return _step(b, tau)[0]

  def segment(carry, xs):
    b_start, seg = xs

    def inner(carry, offset):
      b_bar, tau_bar = carry
      # Recompute the state `offset` steps into the segment: O(L^2) time, O(1) states.
      b = jax.lax.fori_loop(0, offset, advance, b_start) if length > 1 else b_start
      _, step_vjp = jax.vjp(_step, b, tau)
      b_bar_prev, tau_bar_step = step_vjp((b_bar, total_bar))
      active = seg * length + offset < k
      return (
        jnp.where(active, b_bar_prev, b_bar),
        tau_bar + jnp.where(active, tau_bar_step, 0),
      ), None

    carry, _ = jax.lax.scan(inner, carry, jnp.arange(length), reverse=True)
    return carry, None

  init = (jnp.zeros_like(total_bar), jnp.zeros_like(tau))
  (b0_bar, tau_bar), _ = jax.lax.scan(segment, init, (b_saved, jnp.arange(count)), reverse=True)
  return b0_bar, tau_bar


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _recursion_recompute(b0, tau, k):
  """Same value as `_recursion_scan`; its VJP keeps O(n) state per row for any k."""
  return _recursion_scan(b0, tau, k)


_recursion_recompute.defvjp(_recursion_fwd, _recursion_bwd)

_VJP_MODES = ("recompute", "autodiff")


def _soft_topk_core(scores: jax.Array, k: int, tau: jax.Array, vjp: str) -> jax.Array:
  """`soft_topk` on validated input already in the compute dtype."""
  alive = jnp.isfinite(scores)
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  row_max = jnp.max(jnp.where(alive, scores, neg_inf), axis=-1, keepdims=True)
  # The relaxation is invariant to a per-row shift; shifting by the maximum before
  # dividing by tau keeps exp in range at any score scale.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0))
  # Divide finite values only: -inf / tau would give NaN in the gradient w.r.t. tau.
  b = jnp.where(alive, (jnp.where(alive, scores, 0) - row_max) / tau, neg_inf)
  if vjp == "recompute":
    return _recursion_recompute(b, tau, k)
  return _recursion_scan(b, tau, k)


def _prepare(scores, k, tau, vjp):
  if vjp not in _VJP_MODES:
    raise ValueError(f"vjp must be one of {_VJP_MODES}; got {vjp!r}.")
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  validation.check_tau(tau)
  validation.check_enough_finite(scores, k)
  dtype = validation.compute_dtype(scores.dtype)
  return scores, k, jnp.asarray(tau, dtype)


def soft_topk(
  scores: ArrayLike, k: int, tau: ArrayLike = 1.0, *, vjp: str = "recompute"
) -> jax.Array:
  r"""Relaxed k-hot vector of the top `k` scores (no noise).

  The recursion of Xie & Ermon, "Reparameterizable Subset Sampling via
  Continuous Relaxations", IJCAI 2019 (arXiv:1901.10517), Algorithm 2:

      a^1 = scores
      p^j = softmax(a^j / tau)                   j = 1, ..., k
      a^{j+1} = a^j + log(1 - p^j)
      output = sum_j p^j

  It runs as a `lax.scan` over the `k` steps carrying the running sum, O(k n)
  time and O(n) state per row.

  Gradients (`vjp`): "recompute" (default) is a custom VJP that stores at most
  16 of the k intermediate states and recomputes the others, so reverse-mode
  memory is O(n) per row for any k (time O(k n) for k <= 16, about
  O(k^2 n / 32) beyond); it supports `grad`/`vjp` but not forward mode.
  "autodiff" differentiates the scan itself: every transformation works
  (`jvp`, `hessian`), at O(k n) memory per row.

  Numerics: each row is shifted by its maximum before dividing by `tau`, so any
  score scale works. `log(1 - p)` is computed without clamping: `log1p(-p)` for
  every item with `p <= 1/2`, and for the one item that can have `p > 1/2` (a
  unique maximum) `log(sum of the other weights) - log(sum of all weights)`. When the other
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
  recycles its mass over its finite entries (it still sums to k; a single finite
  entry gets k; a row with none gets zeros).

  Args:
    scores: `[..., n]` real floating scores; leading axes are batch axes.
    k: subset size, a Python int with `1 <= k <= n` (static under jit).
    tau: temperature, a scalar > 0; may be a traced array (changing it does
      not recompile a jitted caller).
    vjp: "recompute" (memory independent of k, reverse mode only) or
      "autodiff" (plain scan autodiff, all transformations).

  Returns:
    `[..., n]` relaxed k-hot vector in the dtype of `scores`.

  Raises:
    TypeError: non-float `scores`, non-int `k`, or non-real `tau`.
    ValueError: `k` outside `[1, n]`; unknown `vjp`; concrete `tau` not finite and > 0;
      concrete `scores` with NaN, `+inf` or fewer than `k` finite entries.

  Example:
    >>> import jax.numpy as jnp
    >>> y = soft_topk(jnp.array([1., 2., 3., 4.]), 2, tau=0.1)
    >>> [round(float(v), 3) for v in y]
    [0.0, 0.0, 1.0, 1.0]
  """
  scores, k, tau = _prepare(scores, k, tau, vjp)
  dtype = validation.compute_dtype(scores.dtype)
  return _soft_topk_core(scores.astype(dtype), k, tau, vjp).astype(scores.dtype)


def gumbel_topk_relaxed(
  key: ArrayLike,
  scores: ArrayLike,
  k: int,
  tau: ArrayLike = 1.0,
  *,
  hard: bool = False,
  vjp: str = "recompute",
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
    vjp: gradient mode, as in `soft_topk`.

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
  scores, k, tau = _prepare(scores, k, tau, vjp)
  if not isinstance(hard, bool):
    raise TypeError(f"hard must be a bool; got {type(hard).__name__}.")
  perturbed = gumbel.perturb(key, scores)
  soft = _soft_topk_core(perturbed, k, tau, vjp)
  if hard:
    _, indices = jax.lax.top_k(perturbed, k)
    exact = gumbel.khot(indices, scores.shape[-1], dtype=soft.dtype)
    # x - x is exactly 0 for finite x, so the forward value stays exactly k-hot.
    soft = exact + (soft - jax.lax.stop_gradient(soft))
  return soft.astype(scores.dtype)
