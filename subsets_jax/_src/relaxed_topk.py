"""The continuous relaxation of top-k of Xie & Ermon (IJCAI 2019)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import gumbel, validation

# Below this share of the top item's weight, the other items' total weight is not used
# through `log` (its reciprocal would overflow in the backward pass); the log-gap to the
# runner-up stands in for log(1 - p_top) instead.
_OTHERS_FLOOR = {jnp.dtype(jnp.float32): 1e-28, jnp.dtype(jnp.float64): 1e-280}

# The backward replays the forward in segments of at most this many steps.
_SEGMENT = 16

# On CPU the rows run in blocks of about this many bytes per `[rows, n]` array, so that
# the k passes over a block stay in cache, and of at least _MIN_BLOCK_ROWS rows, because
# XLA:CPU splits a fusion's work across threads by rows.
_CHUNK_BYTES = 2**19
_MIN_BLOCK_ROWS = 2

# Elsewhere all rows run in one block (small blocks would starve the device) unless the
# backward would hold more than both 16 arrays of all rows and this many bytes.
_DEVICE_HELD_BYTES = 2**28


@jax.custom_jvp
def _log1m(p: jax.Array) -> jax.Array:
  """log(1 - p) for 0 <= p <= 1/2, as -2 atanh(z) with z = p / (2 - p) <= 1/3.

  The odd series of atanh to z^15 (float32) or z^33 (float64) is accurate to a few ulp
  on that range, and is plain arithmetic, which XLA fuses more cheaply than `log`.
  """
  z = p / (2 - p)
  z2 = z * z
  terms = 8 if p.dtype.itemsize <= 4 else 17
  acc = jnp.asarray(1 / (2 * terms - 1), p.dtype)
  for i in reversed(range(terms - 1)):
    acc = acc * z2 + 1 / (2 * i + 1)
  return -2 * z * acc


# The derivative -1 / (1 - p) directly: differentiating the series would store its terms.
_log1m.defjvp(lambda primals, tangents: (_log1m(primals[0]), -tangents[0] / (1 - primals[0])))


def _log1m_step(p: jax.Array, log1m_top: jax.Array) -> jax.Array:
  """log(1 - p) for every item: `log1m_top` for the dominant one (p > 1/2), else `_log1m`.

  The forward (`_step`), the replay (`_advance`) and `_step_vjp` all call this, so they
  make the same choice of the dominant item from bitwise the same p.
  """
  dominant = p > 0.5
  return jnp.where(dominant, log1m_top, _log1m(jnp.where(dominant, 0, p)))


def _step(b: jax.Array, tau: jax.Array, lazy_runner_up: bool):
  """One step on `[rows, n]` in scaled units `b = a / tau`: p = softmax(b), b += log(1 - p) / tau.

  Excluded items are `b = -inf` and stay so. Returns `(b_next, p, aux)`; `aux`, `[4, rows,
  1]`, holds the rows' scalars that let `_probs`, `_advance` and `_step_vjp` redo the step
  without reductions: the shift `m` and `1 / s` (`_probs` computes `exp(b - m) / s` by the
  same operations as here, hence bitwise the same p and the same dominant item),
  `log1m_top = log(1 - p_top)` for the item that may have p > 1/2, and
  `inv_share = 1 / (1 - p_top)` (0 where the runner-up gap stands in).
  `lazy_runner_up`: reduce for the runner-up under a `lax.cond`, only when a row needs it
  (on CPU this saves a pass; on a GPU the predicate is a round trip to the host).
  """
  neg_inf = jnp.array(-jnp.inf, b.dtype)
  # The relaxation is shift invariant, so the shift carries no gradient.
  m = jax.lax.stop_gradient(jnp.max(b, axis=-1, keepdims=True))
  m_safe = jnp.where(jnp.isfinite(m), m, 0)
  e = jnp.exp(b - m_safe)
  s = jnp.sum(e, axis=-1, keepdims=True)
  s_safe = jnp.where(s > 0, s, 1)
  inv_s = 1 / s_safe
  p = e * inv_s
  # Only a unique maximum can have p > 1/2, and there log(1 - p) would cancel: use
  # log(1 - p_top) = log(sum of the other weights) - log(total weight) instead.
  is_max = b == m
  others = jnp.sum(jnp.where(is_max, 0, e), axis=-1, keepdims=True)
  use_log = others > _OTHERS_FLOOR[jnp.dtype(b.dtype)]
  # Where the others underflow, the log-gap to the runner-up stands in, as a constant;
  # with no other finite item it is 0, so a lone finite item keeps receiving the mass.
  # Where rounding still calls a top item dominant at s >= 2 (ties), gap = 0 gives
  # log(1 - p_top) = -log s = log(1/2), the right value.
  needs_runner_up = ~use_log & (s_safe < 2)
  runner_up_fn = lambda: jnp.max(jnp.where(is_max, neg_inf, b), axis=-1, keepdims=True)
  if lazy_runner_up:
    none = lambda: jnp.full_like(m, -jnp.inf)
    runner_up = jax.lax.cond(jnp.any(needs_runner_up), runner_up_fn, none)
  else:
    runner_up = runner_up_fn()
  runner_up = jnp.where(needs_runner_up, runner_up, neg_inf)
  gap = jax.lax.stop_gradient(jnp.where(jnp.isfinite(runner_up), runner_up - m_safe, 0))
  log_others = jnp.where(use_log, jnp.log(jnp.where(use_log, others, 1)), gap)
  log1m_top = log_others - jnp.log(s_safe)
  log1m = _log1m_step(p, log1m_top)
  inv_share = jnp.where(use_log, jnp.exp(-jnp.where(use_log, log1m_top, 0)), 0)
  aux = jax.lax.stop_gradient(jnp.stack([m_safe, inv_s, log1m_top, inv_share]))
  return b + log1m / tau, p, aux


def _probs(b: jax.Array, aux: jax.Array) -> jax.Array:
  """The step's p from its stored scalars, by `_step`'s own operations (bitwise equal)."""
  return jnp.exp(b - aux[0]) * aux[1]


def _advance(b: jax.Array, p: jax.Array, aux: jax.Array, tau: jax.Array) -> jax.Array:
  """b + log(1 - p) / tau, with the dominant item's log(1 - p_top) from the stored scalars."""
  return b + _log1m_step(p, aux[2]) / tau


def _step_vjp(p, aux, tau, b_next_bar, total_bar):
  """Analytic VJP of one step: cotangents of (b_next, p) -> cotangents of (b, tau).

  With g = b_next_bar / tau: p_bar = total_bar - g / (1 - p) for ordinary items and
  total_bar for the dominant one; the softmax gives p * (p_bar - <p, p_bar>); the
  dominant item's log(1 - p_top) = log(others) - log(total) adds
  g_top * p * (inv_share * [not top] - 1). tau_bar = -<g, log(1 - p)> / tau.
  """
  log1m_top, inv_share = aux[2], aux[3]
  dominant = p > 0.5
  log1m = _log1m_step(p, log1m_top)
  g = b_next_bar / tau
  # 1 - p >= 1/2 for every item that is not dominant.
  p_bar = total_bar - jnp.where(dominant, 0, g / (1 - p))
  softmax_dot = jnp.sum(p * p_bar, axis=-1, keepdims=True)
  g_top = jnp.sum(jnp.where(dominant, g, 0), axis=-1, keepdims=True)
  b_bar = b_next_bar + p * (p_bar - softmax_dot + g_top * (jnp.where(dominant, 0, inv_share) - 1))
  # Excluded items (p = 0) may carry b_next_bar but no log(1 - p) term.
  tau_bar = -jnp.sum(jnp.where(p > 0, g * log1m, 0)) / tau
  return b_bar, tau_bar


def _block_forward(b0, tau, k, fast_device=False):
  """Sum of the k softmaxes of a `[rows, n]` block, and the steps' scalars `[k, 4, rows, 1]`.

  `fast_device` (GPU, TPU): the runner-up is always reduced (no host round trip for a
  `lax.cond`) and the scan is unrolled by up to 16 steps, so that the loop's
  per-iteration overhead is paid once per 16 steps. Otherwise (CPU, and `vjp="autodiff"`)
  the loop stays rolled, which keeps compile times short.
  """

  def body(carry, _):
    b, total = carry
    b, p, aux = _step(b, tau, lazy_runner_up=not fast_device)
    return (b, total + p), aux

  init = (b0, jnp.zeros_like(b0))
  unroll = min(k, _SEGMENT) if fast_device else 1
  (_, total), aux = jax.lax.scan(body, init, None, length=k, unroll=unroll)
  return total, aux


def _segments(k: int) -> tuple[int, int]:
  """(segment length L, number of segments S) with S * L >= k and L <= _SEGMENT."""
  length = min(k, _SEGMENT)
  return length, -(-k // length)


def _block_backward(b0, total_bar, aux, tau, k):
  """VJP of `_block_forward(b0, tau, k)[0]`, replaying the states from the stored scalars.

  k <= 16: the k steps' p are replayed (elementwise) and walked backwards. Larger k: one
  replay keeps the S = ceil(k / 16) segment-start states, and each segment, last first,
  is replayed into its 16 steps' p and walked backwards. At most S + 16 arrays are held.
  The loops stay rolled: each step's arrays are materialised at the loop boundary (XLA
  would otherwise fuse the chain into every consumer and recompute it), and the compile
  time does not grow with k.
  """
  length, count = _segments(k)
  # Padding steps replay as the identity: m = +inf gives p = 0 and log(1 - p) = 0.
  identity = jnp.zeros((length * count - k, *aux.shape[1:]), aux.dtype).at[:, 0].set(jnp.inf)
  aux = jnp.concatenate([aux, identity]).reshape(count, length, *aux.shape[1:])

  def replay(b, seg_aux):
    """The segment's end state and the p of each of its steps, stacked."""

    def body(b, step_aux):
      p = _probs(b, step_aux)
      return _advance(b, p, step_aux, tau), p

    return jax.lax.scan(body, b, seg_aux)

  def walk_back(carry, xs):
    b_start, seg_aux = xs
    _, ps = replay(b_start, seg_aux)

    def body(carry, x):
      b_bar, tau_bar = carry
      p, step_aux = x
      b_bar, tau_bar_step = _step_vjp(p, step_aux, tau, b_bar, total_bar)
      return (b_bar, tau_bar + tau_bar_step), None

    return jax.lax.scan(body, carry, (ps, seg_aux), reverse=True)[0], None

  init = (jnp.zeros_like(b0), jnp.zeros((), b0.dtype))
  if count == 1:
    return walk_back(init, (b0, aux[0]))[0]
  _, starts = jax.lax.scan(lambda b, seg_aux: (replay(b, seg_aux)[0], b), b0, aux)
  return jax.lax.scan(walk_back, init, (starts, aux), reverse=True)[0]


def _block_shape(x: jax.Array, k: int, blocked: bool) -> tuple[int, int]:
  """(rows per block, number of blocks) for `[r, n]` rows.

  The backward holds `held = L + S` arrays of a block (`_block_backward`, S = 0 for one
  segment), so blocks get fewer rows as k grows: memory does not grow with k beyond 16
  arrays of all rows (blocked) or beyond the larger of that and `_DEVICE_HELD_BYTES`.
  Blocked (CPU): about `_CHUNK_BYTES` per block (at least `_MIN_BLOCK_ROWS` rows), so the
  k passes over a block hit the cache. Otherwise (GPU, TPU) one block of all rows while
  the held arrays fit that bound, else ceil(held / 16) blocks.
  """
  r, n = x.shape
  length, count = _segments(k)
  held = length + (count if count > 1 else 0)
  row_bytes = n * x.dtype.itemsize
  if blocked:
    budget = min(_CHUNK_BYTES, _CHUNK_BYTES * _SEGMENT // held)
    rows = min(r, max(_MIN_BLOCK_ROWS, budget // row_bytes))
  elif held * r * row_bytes <= max(_SEGMENT * r * row_bytes, _DEVICE_HELD_BYTES):
    rows = r
  else:
    rows = -(-r // -(-held // _SEGMENT))
  return rows, -(-r // rows)


def _to_blocks(x: jax.Array, rows: int, count: int) -> jax.Array:
  """`[r, n]` -> `[count, rows, n]`, padded with zero rows (finite: computed, then dropped)."""
  return jnp.pad(x, ((0, count * rows - x.shape[0]), (0, 0))).reshape(count, rows, -1)


def _from_blocks(x: jax.Array, r: int) -> jax.Array:
  return x.reshape(-1, x.shape[-1])[:r]


# A block is one `[rows, n]` array rather than vmapped rows: batching the scans inside
# would move axes and copy every stored state.
def _forward_rows(b0, tau, k, *, blocked):
  """`_block_forward` block by block: the sum `[r, n]` and the steps' scalars `[k, 4, r, 1]`."""
  r = b0.shape[0]
  rows, count = _block_shape(b0, k, blocked)
  forward = functools.partial(_block_forward, tau=tau, k=k, fast_device=not blocked)
  total, aux = jax.lax.map(forward, _to_blocks(b0, rows, count))
  aux = jnp.moveaxis(aux, 0, 2).reshape(k, aux.shape[2], count * rows, 1)[:, :, :r]
  return _from_blocks(total, r), aux


def _backward_rows(b0, total_bar, aux, tau, k, *, blocked):
  """VJP of `_forward_rows` (the same `blocked`) from its scalars."""
  r = b0.shape[0]
  rows, count = _block_shape(b0, k, blocked)
  # Padding rows replay as the identity: a shift of +inf gives p = 0.
  aux = jnp.pad(aux, ((0, 0), (0, 0), (0, count * rows - r), (0, 0)))
  aux = aux.at[:, 0, r:].set(jnp.inf)
  aux = jnp.moveaxis(aux.reshape(k, aux.shape[1], count, rows, 1), 2, 0)
  blocks = (_to_blocks(b0, rows, count), _to_blocks(total_bar, rows, count), aux)
  b0_bar, tau_bar = jax.lax.map(lambda xs: _block_backward(*xs, tau, k), blocks)
  return _from_blocks(b0_bar, r), jnp.sum(tau_bar).astype(tau.dtype)


def _by_platform(fn, *args):
  """`fn(*args, blocked=...)`: cache-sized row blocks on CPU, one block elsewhere.

  Chosen when the computation is lowered, so one jitted function serves every backend.
  """
  return jax.lax.platform_dependent(
    *args,
    cpu=functools.partial(fn, blocked=True),
    default=functools.partial(fn, blocked=False),
  )


def _recursion_fwd(b0, tau, k):
  total, aux = _by_platform(lambda b, t, **kw: _forward_rows(b, t, k, **kw), b0, tau)
  return total, (b0, aux, tau)


def _recursion_bwd(k, residuals, total_bar):
  b0, aux, tau = residuals
  return _by_platform(
    lambda b, t_bar, a, t, **kw: _backward_rows(b, t_bar, a, t, k, **kw), b0, total_bar, aux, tau
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _recursion_recompute(b0, tau, k):
  """Sum of the k softmaxes of `[r, n]` rows; its VJP keeps O(n) state per row for any k."""
  return _by_platform(lambda b, t, **kw: _forward_rows(b, t, k, **kw)[0], b0, tau)


_recursion_recompute.defvjp(_recursion_fwd, _recursion_bwd)


def _recursion_autodiff(b0, tau, k):
  """Sum of the k softmaxes of `[r, n]` rows; a plain scan, differentiable in every mode."""
  return _block_forward(b0, tau, k)[0]


_VJP_MODES = ("recompute", "autodiff")


def _scaled_rows(scores: jax.Array, tau: jax.Array) -> jax.Array:
  """`(scores - row max) / tau`, `-inf` kept: the recursion's input `b`."""
  alive = jnp.isfinite(scores)
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  row_max = jnp.max(jnp.where(alive, scores, neg_inf), axis=-1, keepdims=True)
  # The relaxation is invariant to a per-row shift; shifting by the maximum before
  # dividing by tau keeps exp in range at any score scale.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0))
  # Divide finite values only: -inf / tau would give NaN in the gradient w.r.t. tau.
  return jnp.where(alive, (jnp.where(alive, scores, 0) - row_max) / tau, neg_inf)


def _relax(scores: jax.Array, tau: jax.Array, k: int, vjp: str) -> jax.Array:
  """`soft_topk` of validated `scores` in the compute dtype, `tau` in the same dtype."""
  if scores.size == 0:  # a batch of no rows (k <= n was checked, so n >= 1)
    return jnp.zeros_like(scores)
  b = _scaled_rows(scores, tau)
  rows = b.reshape(-1, b.shape[-1])
  recursion = _recursion_recompute if vjp == "recompute" else _recursion_autodiff
  return validation.nan_where(validation.bad_rows(scores), recursion(rows, tau, k).reshape(b.shape))


@functools.partial(jax.jit, static_argnames=("k", "vjp"))
def _soft_topk(scores, tau, *, k, vjp):
  dtype = validation.compute_dtype(scores.dtype)
  return _relax(scores.astype(dtype), jnp.asarray(tau, dtype), k, vjp).astype(scores.dtype)


def relaxed_sample(key, scores, tau, k, hard, vjp, dtype):
  """`gumbel_topk_relaxed` of checked arguments, in the compute `dtype` (under `jit`)."""
  perturbed = gumbel.perturb(key, scores, dtype)
  soft = _relax(perturbed, jnp.asarray(tau, dtype), k, vjp)
  if not hard:
    return soft
  _, indices = jax.lax.top_k(perturbed, k)
  exact = gumbel.khot_core(indices, scores.shape[-1], dtype)
  # x - x is exactly 0 for finite x, so the forward value stays exactly k-hot.
  return exact + (soft - jax.lax.stop_gradient(soft))


@functools.partial(jax.jit, static_argnames=("k", "hard", "vjp"))
def _gumbel_topk_relaxed(key, scores, tau, *, k, hard, vjp):
  dtype = validation.compute_dtype(scores.dtype)
  return relaxed_sample(key, scores, tau, k, hard, vjp, dtype).astype(scores.dtype)


def check_vjp(vjp) -> None:
  if vjp not in _VJP_MODES:
    raise ValueError(f"vjp must be one of {_VJP_MODES}; got {vjp!r}.")


def _check(scores, k, tau, vjp):
  check_vjp(vjp)
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  tau = validation.check_tau(tau)
  validation.check_enough_finite(scores, k)
  return scores, k, tau


def soft_topk(
  scores: ArrayLike, k: int, tau: ArrayLike = 1.0, *, vjp: str = "recompute"
) -> jax.Array:
  r"""Relaxed k-hot vector of the top `k` scores (no noise).

  The recursion of Xie & Ermon (2019), Algorithm 2:

  .. math::

     a^1 = s, \qquad p^j = \operatorname{softmax}(a^j / \tau), \qquad
     a^{j+1} = a^j + \log(1 - p^j), \qquad j = 1, \dots, k,

  and the output is :math:`\sum_j p^j`. It runs as a `lax.scan` over the `k` steps
  carrying the running sum: O(k n) time and O(n) state per row.

  Gradients (`vjp`): "recompute" (default) is a custom VJP with an analytic backward.
  The forward stores four scalars per row and step; the backward replays the steps from
  them elementwise, in segments of 16 steps, so reverse-mode memory is O(n (16 +
  k / 16)) per row. It supports `grad` and `vjp` but not forward mode. "autodiff"
  differentiates the scan itself: every transformation works (`jvp`, `hessian`), at
  O(k n) memory per row.

  Numerics: each row is shifted by its maximum before dividing by `tau`, so any score
  scale works. `log(1 - p)` is computed without clamping: from `p` for every item with
  `p <= 1/2`, and for the one item that can have `p > 1/2` (a unique maximum) as
  `log(sum of the other weights) - log(sum of all weights)`. When the other weights sum
  to less than 1e-28 (float32; 1e-280 in float64) of the top one's, the log-gap to the
  runner-up stands in for `log(1 - p_top)`, as a constant. Half-precision inputs are
  computed in float32, float64 in float64; the result has the input dtype.

  Properties: entries are >= 0 and sum to `k`; as `tau -> 0` the output tends to the
  exact k-hot of the top `k` scores (for distinct scores). For `tau` not small compared
  with the score gaps, entries can exceed 1 (`soft_topk([0., 10.], 2)` is about
  `[0.5, 1.5]`): it is a relaxation, not a probability of inclusion.

  Excluded items: `-inf` scores get exactly zero mass. Concrete scores with fewer than
  `k` finite entries in a row are rejected; under `jit` such a row recycles its mass over
  its finite entries (it still sums to k; a row with none gives zeros). Concrete NaN or
  `+inf` scores are rejected; traced ones make their row's output NaN.

  Args:
    scores: `[..., n]` real floating scores; leading axes are batch axes.
    k: subset size, a Python int with `1 <= k <= n` (static under `jit`).
    tau: temperature, a real scalar > 0; may be traced (changing it does not recompile).
    vjp: "recompute" (memory independent of k, reverse mode only) or "autodiff".

  Returns:
    `[..., n]` relaxed k-hot vector in the dtype of `scores`.

  Raises:
    TypeError: non-float `scores`, non-int `k`, or non-real `tau`.
    ValueError: `k` outside `[1, n]`; unknown `vjp`; concrete `tau` not finite and > 0;
      concrete `scores` with NaN, `+inf` or fewer than `k` finite entries in a row.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> y = sj.soft_topk(jnp.array([1., 2., 3., 4.]), 2, tau=0.1)
    >>> [round(float(v), 3) for v in y]
    [0.0, 0.0, 1.0, 1.0]

  References:
    Xie & Ermon, "Reparameterizable Subset Sampling via Continuous Relaxations",
    IJCAI 2019, arXiv:1901.10517.
  """
  scores, k, tau = _check(scores, k, tau, vjp)
  return _soft_topk(scores, tau, k=k, vjp=vjp)


def gumbel_topk_relaxed(
  key: ArrayLike,
  scores: ArrayLike,
  k: int,
  tau: ArrayLike = 1.0,
  *,
  hard: bool = False,
  vjp: str = "recompute",
) -> jax.Array:
  r"""Reparameterised relaxed sample of a k-subset (Xie & Ermon, IJCAI 2019).

  Returns `soft_topk(scores + g, k, tau)` where `g = gumbel_noise(key, scores)`, the
  noise of `gumbel_topk(key, scores, k)`.

  With `hard=True` (straight-through) the forward value is exactly
  `khot(gumbel_topk(key, scores, k), n)`, an exact sample of the Plackett-Luce subset
  distribution, and the gradient is that of the relaxed output.

  Args:
    key: a PRNG key (`jax.random.key` or a raw `uint32[2]` key).
    scores: `[..., n]` unnormalised log-weights (`log w_i`); `-inf` excludes an item.
    k: subset size, a Python int with `1 <= k <= n` (static under `jit`).
    tau: temperature, a real scalar > 0; may be traced.
    hard: straight-through: exact k-hot forward value, relaxed gradient.
    vjp: gradient mode, as in `soft_topk`.

  Returns:
    `[..., n]` in the dtype of `scores`: the relaxed k-hot, or the exact k-hot when `hard`;
    NaN for a row with traced NaN or `+inf` scores, with or without `hard`.

  Raises:
    TypeError: as `soft_topk`, and for a non-bool `hard`.
    ValueError: as `soft_topk`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> s = jnp.log(jnp.array([.1, .2, .3, .4]))
    >>> y = sj.gumbel_topk_relaxed(jax.random.key(0), s, 2, tau=0.5)
    >>> round(float(y.sum()), 4)
    2.0
    >>> h = sj.gumbel_topk_relaxed(jax.random.key(0), s, 2, tau=0.5, hard=True)
    >>> sorted(set(h.tolist()))
    [0.0, 1.0]

  References:
    Xie & Ermon, "Reparameterizable Subset Sampling via Continuous Relaxations",
    IJCAI 2019, arXiv:1901.10517.
  """
  scores, k, tau = _check(scores, k, tau, vjp)
  if not isinstance(hard, bool):
    raise TypeError(f"hard must be a bool; got {type(hard).__name__}.")
  key = validation.check_key(key)
  return _gumbel_topk_relaxed(key, scores, tau, k=k, hard=hard, vjp=vjp)
