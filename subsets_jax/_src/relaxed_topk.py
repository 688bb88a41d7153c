"""The continuous relaxation of top-k of Xie & Ermon (IJCAI 2019)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import cpu_kernel, gumbel, threefry, validation

# Below this share of the top item's weight, the other items' total weight is not
# used through `log` (its reciprocal would overflow in the backward pass); the gap
# to the runner-up stands in for log(1 - p_top) instead.
_OTHERS_FLOOR = {jnp.dtype(jnp.float32): 1e-28, jnp.dtype(jnp.float64): 1e-280}

# Rows are processed in chunks of about this many bytes per [rows, n] array, so the k
# passes over a chunk hit the cache instead of main memory (about 3x faster at n = 60,000
# on a 2-core CPU), but of at least _MIN_BLOCK_ROWS rows: XLA:CPU splits a fusion's work
# across threads by rows, and one-row blocks ran on one core (forward+backward 2-2.5x
# slower at n = 60,000 and 100,000). 512 KiB rather than 1 MiB: forward+backward at
# (100, 10000, 9) 26-28 -> 17 ms, the same elsewhere; see benchmarks/README.md.
_CHUNK_BYTES = 2**19
_MIN_BLOCK_ROWS = 2

# Off CPU all rows go in one block unless the backward's held arrays would exceed both
# 16 arrays' worth and this many bytes; then they are split (see `_block_shape`).
_DEVICE_HELD_BYTES = 2**28


@jax.custom_jvp
def _log1m(p: jax.Array) -> jax.Array:
  """log(1 - p) for 0 <= p <= 1/2, as -2 atanh(z) with z = p / (2 - p) <= 1/3.

  The odd series of atanh to z^15 (float32) or z^33 (float64) is accurate to a few
  ulp there, and is plain arithmetic: 1.5x faster than `log` on XLA:CPU.
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


def _step(b: jax.Array, tau: jax.Array, lazy_runner_up: bool = True):
  """One step on `[rows, n]` in scaled units `b = a / tau`: p = softmax(b), b += log(1 - p) / tau.

  Excluded items are `b = -inf` and stay so. Returns `(b_next, p, aux)`; `aux`, `[4, rows,
  1]`, holds the rows' scalars that let `_probs`, `_advance` and `_step_vjp` redo the
  step without reductions: the shift `m` and `log s` (`_probs` computes
  `exp((b - m) - log s)` by the same operations as here, hence bitwise the same p and the
  same dominant item), `log1m_top = log(1 - p_top)` for the item that may have p > 1/2,
  and `inv_share = 1 / (1 - p_top)` (0 where the runner-up gap stands in).
  `lazy_runner_up`: reduce for the runner-up only under a `lax.cond` when some row
  needs it (saves a pass on CPU; on a GPU the predicate costs a host round trip).
  """
  neg_inf = jnp.array(-jnp.inf, b.dtype)
  # The relaxation is shift invariant, so the shift carries no gradient.
  m = jax.lax.stop_gradient(jnp.max(b, axis=-1, keepdims=True))
  m_safe = jnp.where(jnp.isfinite(m), m, 0)
  e = jnp.exp(b - m_safe)
  s = jnp.sum(e, axis=-1, keepdims=True)
  s_safe = jnp.where(s > 0, s, 1)
  log_s = jnp.log(s_safe)
  # p by `_probs`'s operations (not e / s): the backward's replay then gets bitwise the
  # same p, hence the same dominant item, even at ties (p = 1/2).
  p = jnp.exp((b - m_safe) - log_s)
  # Only a unique maximum can have p > 1/2, and there log(1 - p) would cancel: use
  # log(1 - p_top) = log(sum of the other weights) - log(total weight) instead. (An
  # argmax would single out the top item too, but is several times slower on CPU.)
  is_max = b == m
  others = jnp.sum(jnp.where(is_max, 0, e), axis=-1, keepdims=True)
  use_log = others > _OTHERS_FLOOR[jnp.dtype(b.dtype)]
  # The runner-up is needed only where a dominant item's others fall below the floor:
  # skip its pass over the block otherwise (p_top = 1 / s, since e_top = 1). Where
  # rounding still calls a top item dominant at s >= 2 (ties), gap = 0 below gives
  # log(1 - p_top) = -log s = log(1/2), the right value.
  needs_runner_up = ~use_log & (s_safe < 2)
  runner_up_fn = lambda: jnp.max(jnp.where(is_max, neg_inf, b), axis=-1, keepdims=True)
  if lazy_runner_up:
    runner_up = jax.lax.cond(
      jnp.any(needs_runner_up), runner_up_fn, lambda: jnp.full_like(m, -jnp.inf)
    )
  else:
    runner_up = jnp.where(needs_runner_up, runner_up_fn(), -jnp.inf)
  # Others below the floor: the log-gap to the runner-up stands in, as a constant; no
  # other finite item: 0, so a lone finite item keeps receiving the mass, not NaN.
  gap = jax.lax.stop_gradient(jnp.where(jnp.isfinite(runner_up), runner_up - m_safe, 0))
  log1m_top = jnp.where(use_log, jnp.log(jnp.where(use_log, others, 1)), gap) - log_s
  log1m = _log1m_step(p, log1m_top)
  inv_share = jnp.where(use_log, jnp.exp(-jnp.where(use_log, log1m_top, 0)), 0)
  aux = jax.lax.stop_gradient(jnp.stack([m_safe, log_s, log1m_top, inv_share]))
  return b + log1m / tau, p, aux


def _probs(b: jax.Array, aux: jax.Array) -> jax.Array:
  """The step's p from its stored scalars, by `_step`'s own operations (bitwise equal)."""
  return jnp.exp((b - aux[0]) - aux[1])


def _advance(b, p, aux, tau):
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


def _block_forward(b0, tau, k, lazy_runner_up=True, unroll=1):
  """Sum of the k softmaxes of a `[rows, n]` block, and the steps' scalars `[k, 4, rows, 1]`."""

  def body(carry, _):
    b, total = carry
    b, p, aux = _step(b, tau, lazy_runner_up)
    return (b, total + p), aux

  (_, total), aux = jax.lax.scan(body, (b0, jnp.zeros_like(b0)), None, length=k, unroll=unroll)
  return total, aux


# On CPU the forward carries e = exp(b - m) from one step to the next (`_carried_forward`)
# when tau is at least this; below it, each step shifts by its exact maximum.
_CARRIED_TAU_MIN = 1 / 16


def _shifted_step(b: jax.Array, e: jax.Array, m: jax.Array, tau: jax.Array):
  """`_step` (CPU form) given `e = exp(b - m)` for a per-row shift `m` near `max(b)`.

  p = e / sum(e), through the stored scalars `aux = [m, 1 / sum(e), log1m_top,
  inv_share]` (`_shifted_probs` redoes it bitwise). The dominant item's others and
  the runner-up need two more passes, taken under a `lax.cond` only when a row has
  an item with p > 1/2. Also returns `m_next`, a shift for `b_next` from these
  scalars alone: no item gains, and items with p <= 1/2 lose at most log(2) / tau,
  so `max(b_next)` lies in `[m_next - log(2) / tau, m_next]`.
  """
  neg_inf = jnp.array(-jnp.inf, b.dtype)
  s = jnp.sum(e, axis=-1, keepdims=True)
  e_max = jnp.max(e, axis=-1, keepdims=True)
  inv_s = 1 / jnp.where(s > 0, s, 1)
  p = e * inv_s
  # The top item's own p, bitwise: a row has a dominant item exactly when this is > 1/2.
  dominant_row = e_max * inv_s > 0.5

  def dominant_terms():
    is_top = e == e_max
    others = jnp.sum(jnp.where(is_top, 0, e), axis=-1, keepdims=True)
    return others, jnp.max(jnp.where(is_top, neg_inf, b), axis=-1, keepdims=True)

  others, runner_up = jax.lax.cond(
    jnp.any(dominant_row), dominant_terms, lambda: (s, jnp.full_like(s, -jnp.inf))
  )
  log_e_max = jnp.log(jnp.where(e_max > 0, e_max, 1))
  top = m + log_e_max
  use_log = others > _OTHERS_FLOOR[jnp.dtype(b.dtype)] * e_max
  # As in `_step`: the runner-up gap stands in where the others underflow; at ties
  # (s >= 2 e_max) gap = 0 gives log(1 - p_top) = log(e_max / s), about log(1/2).
  needs_gap = ~use_log & (s < 2 * e_max) & jnp.isfinite(runner_up)
  gap = jnp.where(needs_gap, runner_up - top, 0)
  log_others = jnp.where(use_log, jnp.log(jnp.where(use_log, others, 1)), gap + log_e_max)
  log1m_top = log_others + jnp.log(inv_s)
  log1m = _log1m_step(p, log1m_top)
  inv_share = jnp.where(use_log, jnp.exp(-jnp.where(use_log, log1m_top, 0)), 0)
  b_next = b + log1m / tau
  # The dominant item drops to top + log1m_top / tau; the others stay below the runner-up.
  m_next = jnp.where(dominant_row, jnp.maximum(top + log1m_top / tau, runner_up), top)
  m_next = jnp.where(e_max > 0, m_next, m)
  aux = jnp.stack([m, inv_s, log1m_top, inv_share])
  return b_next, p, aux, m_next


def _shifted_probs(b: jax.Array, aux: jax.Array) -> jax.Array:
  """`_shifted_step`'s p from its stored scalars, by the same operations (bitwise equal)."""
  return jnp.exp(b - aux[0]) * aux[1]


def _row_max(b: jax.Array) -> jax.Array:
  m = jnp.max(b, axis=-1, keepdims=True)
  return jnp.where(jnp.isfinite(m), m, 0)


def _carried_forward(b0, tau, k):
  """k `_shifted_step`s carrying e = exp(b - m), m the previous step's `m_next`.

  One pass writes b, the running sum and the next e; two reductions read e. With
  tau >= 1/16 the top item of each row keeps e >= 2^-16, far from underflow.
  """

  def body(carry, _):
    b, total, e, m = carry
    b, p, aux, m = _shifted_step(b, e, m, tau)
    return (b, total + p, jnp.exp(b - m), m), aux

  m0 = _row_max(b0)
  init = (b0, jnp.zeros_like(b0), jnp.exp(b0 - m0), m0)
  (_, total, _, _), aux = jax.lax.scan(body, init, None, length=k)
  return total, aux


def _exact_forward(b0, tau, k):
  """k `_shifted_step`s, each shifted by its row's exact maximum (any tau)."""

  def body(carry, _):
    b, total = carry
    m = _row_max(b)
    b, p, aux, _ = _shifted_step(b, jnp.exp(b - m), m, tau)
    return (b, total + p), aux

  (_, total), aux = jax.lax.scan(body, (b0, jnp.zeros_like(b0)), None, length=k)
  return total, aux


def _block_forward_cpu(b0, tau, k):
  """`_block_forward`'s sum on CPU, with `_shifted_step`'s scalars (for `_shifted_probs`).

  Carrying e saves a reduction and an `exp` pass per step: forward 51 -> 39 ms at
  (100, 60000, 9) on 2 cores (benchmarks/README.md). Below tau = 1/16 the shift bound
  lets a row's top e fall under 2^-16 (its others towards underflow), so there every
  step takes its exact maximum.
  """
  return jax.lax.cond(
    tau >= _CARRIED_TAU_MIN,
    functools.partial(_carried_forward, k=k),
    functools.partial(_exact_forward, k=k),
    b0,
    tau,
  )


# The backward pass replays at most this many steps at a time.
_SEGMENT = 16


def _segments(k: int) -> tuple[int, int]:
  """(segment length L, number of segments S) with S * L >= k; L <= _SEGMENT."""
  length = min(k, _SEGMENT)
  return length, -(-k // length)


def _block_backward(b0, total_bar, aux, tau, k, materialize=True, probs=_probs):
  """VJP of `_block_forward(b0, tau, k)[0]`, replaying the states from the stored scalars.

  k <= 16: the k steps' p are replayed (elementwise) and walked backwards. Larger k:
  one replay keeps the S = ceil(k / 16) segment-start states, and each segment, last
  first, is replayed into its 16 steps' p and walked backwards. At most S + 16 arrays
  are held. Within a segment the steps are unrolled: XLA:CPU copies arrays stacked by
  a scan. `materialize` keeps the optimisation barriers that stop XLA:CPU from
  re-fusing the chain (the CPU's default; off CPU the backward is faster without them).
  `probs`: the forward's p from its scalars (`_probs`, or `_shifted_probs` on CPU).
  """
  barrier = jax.lax.optimization_barrier if materialize else lambda x: x
  length, count = _segments(k)
  # Padding steps replay as the identity: m = +inf gives p = 0 and log(1 - p) = 0.
  identity = jnp.zeros((length * count - k, *aux.shape[1:]), aux.dtype).at[:, 0].set(jnp.inf)
  aux = jnp.concatenate([aux, identity]).reshape(count, length, *aux.shape[1:])

  def replay(b, seg_aux):
    """The segment's end state and the p of each of its steps."""
    ps = []
    for i in range(length):
      # Materialise p and b (CPU): otherwise XLA fuses the elementwise chain into every
      # consumer and recomputes it, O(L^2) transcendentals.
      p = barrier(probs(b, seg_aux[i]))
      ps.append(p)
      b = barrier(_advance(b, p, seg_aux[i], tau))
    return b, ps

  def walk_back(carry, xs):
    b_start, seg_aux = xs
    _, ps = replay(b_start, seg_aux)
    b_bar, tau_bar = carry
    for i in reversed(range(length)):
      b_bar, tau_bar_step = _step_vjp(ps[i], seg_aux[i], tau, b_bar, total_bar)
      b_bar = barrier(b_bar)
      tau_bar = tau_bar + tau_bar_step
    return (b_bar, tau_bar), None

  init = (jnp.zeros_like(b0), jnp.zeros((), b0.dtype))
  if count == 1:
    return walk_back(init, (b0, aux[0]))[0]
  _, starts = jax.lax.scan(lambda b, seg_aux: (replay(b, seg_aux)[0], b), b0, aux)
  return jax.lax.scan(walk_back, init, (starts, aux), reverse=True)[0]


def _block_shape(x: jax.Array, k: int, blocked: bool) -> tuple[int, int]:
  """(rows per block, number of blocks) for `[r, n]` rows.

  The backward holds `held = L + S` arrays of a block (`_block_backward`, S = 0 for one
  segment), so blocks get fewer rows as k grows: memory does not grow with k beyond
  16 arrays of all rows (CPU) or beyond the larger of that and `_DEVICE_HELD_BYTES`.
  Blocked (CPU): about _CHUNK_BYTES per block (at least _MIN_BLOCK_ROWS rows), so the
  k passes over a block hit the cache. Otherwise (GPU, TPU: blocks run one after
  another, and small ones starve the device) one block of all rows while the held
  arrays fit that bound, else ceil(held / 16) blocks.
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


def _recursion_scan(b0, tau, k):
  """Sum of the k softmaxes for `[r, n]` rows; plain scan, differentiable in every mode."""
  return _block_forward(b0, tau, k)[0]


# A block is one `[rows, n]` array rather than vmapped rows: batching the scans inside
# would move axes and copy every stored state.
def _forward_rows(b0, tau, k, *, blocked, shifted=None, lazy_runner_up=None, unroll=None):
  """`_recursion_scan` block by block, and the steps' scalars `[k, 4, r, 1]`.

  `shifted` (default: `blocked`, i.e. CPU): `_block_forward_cpu`, whose scalars are
  read back by `_shifted_probs`; else `_block_forward` with `lazy_runner_up` and
  `unroll`, which default to no `lax.cond` (on a GPU its predicate is a host round
  trip) and the scan unrolled by up to 16 steps; measured on an H100
  (benchmarks/README.md), forward 0.69 -> 0.53 ms at (100, 60000, 9).
  """
  shifted = blocked if shifted is None else shifted
  lazy_runner_up = False if lazy_runner_up is None else lazy_runner_up
  unroll = min(k, _SEGMENT) if unroll is None else unroll
  if shifted:
    forward = functools.partial(_block_forward_cpu, tau=tau, k=k)
  else:
    forward = functools.partial(
      _block_forward, tau=tau, k=k, lazy_runner_up=lazy_runner_up, unroll=unroll
    )
  r = b0.shape[0]
  rows, count = _block_shape(b0, k, blocked)
  total, aux = jax.lax.map(forward, _to_blocks(b0, rows, count))
  aux = jnp.moveaxis(aux, 0, 2).reshape(k, aux.shape[2], count * rows, 1)[:, :, :r]
  return _from_blocks(total, r), aux


def _backward_rows(b0, total_bar, aux, tau, k, *, blocked, shifted=None, materialize=None):
  """VJP of `_forward_rows` (the same `blocked` and `shifted`) from its scalars.

  `materialize` (`_block_backward`) defaults to the CPU's need for barriers; on an
  H100 the backward without them was faster (forward+backward 1.62 -> 1.28 ms at
  (100, 60000, 9)).
  """
  shifted = blocked if shifted is None else shifted
  materialize = blocked if materialize is None else materialize
  probs = _shifted_probs if shifted else _probs
  r = b0.shape[0]
  rows, count = _block_shape(b0, k, blocked)
  # Padding rows replay as the identity: a shift of +inf gives p = 0.
  aux = jnp.pad(aux, ((0, 0), (0, 0), (0, count * rows - r), (0, 0)))
  aux = aux.at[:, 0, r:].set(jnp.inf)
  aux = jnp.moveaxis(aux.reshape(k, aux.shape[1], count, rows, 1), 2, 0)
  blocks = (_to_blocks(b0, rows, count), _to_blocks(total_bar, rows, count), aux)
  b0_bar, tau_bar = jax.lax.map(lambda xs: _block_backward(*xs, tau, k, materialize, probs), blocks)
  return _from_blocks(b0_bar, r), jnp.sum(tau_bar).astype(tau.dtype)


def _by_platform(fn, *args):
  """`fn(*args, blocked=...)`: cache-sized blocks on CPU, one block (mostly) elsewhere.

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
  """Same value as `_recursion_scan`; its VJP keeps O(n) state per row for any k."""
  return _by_platform(lambda b, t, **kw: _forward_rows(b, t, k, **kw)[0], b0, tau)


_recursion_recompute.defvjp(_recursion_fwd, _recursion_bwd)

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


def _kernel_or_xla(rows: jax.Array, tau: jax.Array, k: int) -> jax.Array:
  """`implementation="cpu_kernel"`: the C++ kernel on CPU, the "recompute" XLA form elsewhere.

  Both branches are traced here, so the kernel is built (or a missing compiler raises) now.
  """
  return jax.lax.platform_dependent(
    rows,
    tau,
    cpu=lambda s, t: cpu_kernel.relaxed_topk(s, t, k),
    default=lambda s, t: _soft_topk_core(s, k, t, "recompute"),
  )


def _kernel_noise_or_xla(key: jax.Array, scores: jax.Array, tau: jax.Array, k: int):
  """`soft_topk(scores + g)` for `gumbel_topk_relaxed` (not `hard`) where the kernel may draw
  the noise (`gumbel.kernel_draws_noise`): on CPU one kernel call draws it and runs the
  forward (`cpu_kernel.gumbel_relaxed_topk`); elsewhere `jax.random.gumbel` and the
  "recompute" XLA form."""
  return jax.lax.platform_dependent(
    key,
    scores,
    tau,
    cpu=lambda key, s, t: cpu_kernel.gumbel_relaxed_topk(threefry.key_data(key), s, t, k),
    default=lambda key, s, t: _soft_topk_core(
      s + jax.random.gumbel(key, s.shape, s.dtype), k, t, "recompute"
    ),
  )


def _soft_topk_core(
  scores: jax.Array, k: int, tau: jax.Array, vjp: str, implementation: str = "xla"
) -> jax.Array:
  """`soft_topk` on validated input already in the compute dtype."""
  if scores.size == 0:  # a batch of no rows (k <= n was checked, so n >= 1)
    return jnp.zeros_like(scores)
  if implementation == "cpu_kernel":
    rows = scores.reshape(-1, scores.shape[-1])
    return _kernel_or_xla(rows, tau, k).reshape(scores.shape)
  b = _scaled_rows(scores, tau)
  rows = b.reshape(-1, b.shape[-1])
  if vjp == "recompute":
    return _recursion_recompute(rows, tau, k).reshape(b.shape)
  return _recursion_scan(rows, tau, k).reshape(b.shape)


_IMPLEMENTATIONS = ("xla", "cpu_kernel")


def _prepare(scores, k, tau, vjp, implementation):
  if vjp not in _VJP_MODES:
    raise ValueError(f"vjp must be one of {_VJP_MODES}; got {vjp!r}.")
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}; got {implementation!r}.")
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  validation.check_tau(tau)
  validation.check_enough_finite(scores, k)
  dtype = validation.compute_dtype(scores.dtype)
  if implementation == "cpu_kernel":
    if vjp != "recompute":
      raise ValueError(
        f"implementation='cpu_kernel' has its own VJP (like vjp='recompute'); got vjp={vjp!r}."
      )
    if dtype != jnp.float32:
      raise ValueError(
        "implementation='cpu_kernel' computes in float32 (float16, bfloat16 and float32 "
        f"scores); got {scores.dtype} scores: use implementation='xla'."
      )
  return scores, k, jnp.asarray(tau, dtype)


def soft_topk(
  scores: ArrayLike,
  k: int,
  tau: ArrayLike = 1.0,
  *,
  vjp: str = "recompute",
  implementation: str = "xla",
) -> jax.Array:
  r"""Relaxed k-hot vector of the top `k` scores (no noise).

  The recursion of Xie & Ermon, "Reparameterizable Subset Sampling via
  Continuous Relaxations", IJCAI 2019 (arXiv:1901.10517), Algorithm 2:

      a^1 = scores
      p^j = softmax(a^j / tau)                   j = 1, ..., k
      a^{j+1} = a^j + log(1 - p^j)
      output = sum_j p^j

  It runs as a `lax.scan` over the `k` steps carrying the running sum, O(k n)
  time and O(n) state per row. On CPU the rows go in blocks small enough (about
  512 KiB, at least 2 rows) for the k passes to stay in cache, and for
  `tau >= 1/16` each step also carries `exp(a^j / tau - shift)` for the next,
  with a shift bounded from the step's own scalars (one `exp` and two
  reductions per step instead of two and three); on other backends in one
  block, the scan unrolled by up to 16 steps (the choice is made when the
  computation is lowered, `lax.platform_dependent`).

  Gradients (`vjp`): "recompute" (default) is a custom VJP with an analytic
  backward. The forward stores only four scalars per row and step (the shift
  and normaliser among them); the backward replays the steps from them
  elementwise (no reductions), holding at most 16 + ceil(k / 16) arrays of one
  block of rows, with fewer rows per block for large k (off CPU only once those
  arrays pass 256 MiB): reverse-mode memory does not grow with k beyond that
  bound, time is O(k n). It
  supports `grad`/`vjp` but not forward mode. "autodiff" differentiates the
  scan itself: every transformation works (`jvp`, `hessian`), at O(k n) memory
  per row.

  Implementations (`implementation`): "xla" (default) is the pure-JAX form
  above, on every backend. "cpu_kernel" runs the same recursion on CPU as one
  fused C++ kernel per row through the XLA FFI (one pass over the row per step
  instead of several XLA fusions; forward+backward 2-4x faster at n >= 1,000
  on a 2-core AVX-512 CPU, benchmarks/README.md): same rules and analytic
  backward, replayed in segments of 16 steps (its scratch grows with k / 16 per
  thread; with AVX-512, rows of at most 256 items run 16 at a time, one per
  vector lane, when k <= 16 and tau >= 1/16), gradients in `scores` and `tau`
  (the backward skips tau's terms when tau is not differentiated), any batch
  axes and `vmap` (one kernel call), its own float32 `exp` (within a few ulps). It is
  compiled on first use with the machine's C++ compiler (`$CXX`, `g++` or
  `c++`; `-march=native`, or `$SUBSETS_JAX_KERNEL_MARCH`) into the temporary
  folder (or `$SUBSETS_JAX_KERNEL_CACHE`), which takes a few seconds; a missing compiler
  is a RuntimeError. Off CPU (same jitted function lowered for a GPU) the "xla"
  form runs. float32 compute only (not float64), with `vjp="recompute"`.

  Numerics: each row is shifted by its maximum before dividing by `tau`, so any
  score scale works. `log(1 - p)` is computed without clamping: `log1p(-p)` for
  every item with `p <= 1/2`, and for the one item that can have `p > 1/2` (a
  unique maximum) `log(sum of the other weights) - log(sum of all weights)`. When the other
  weights sum to less than 1e-28 (float32; 1e-280 in float64) of the top one's,
  the log-gap to the runner-up stands in for `log(1 - p_top)` (a difference of
  at most log n, in a regime where the top item is already taken), as a constant:
  no gradient flows through that gap, in both `vjp` modes. The seed's
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
    implementation: "xla" (pure JAX, default) or "cpu_kernel" (fused C++ kernel
      on CPU, see above).

  Returns:
    `[..., n]` relaxed k-hot vector in the dtype of `scores`.

  Raises:
    TypeError: non-float `scores`, non-int `k`, or non-real `tau`.
    ValueError: `k` outside `[1, n]`; unknown `vjp` or `implementation`; concrete
      `tau` not finite and > 0; concrete `scores` with NaN, `+inf` or fewer than `k`
      finite entries; "cpu_kernel" with float64 scores or `vjp="autodiff"`.
    RuntimeError: "cpu_kernel" without a C++ compiler, or its build failing.

  Example:
    >>> import jax.numpy as jnp
    >>> y = soft_topk(jnp.array([1., 2., 3., 4.]), 2, tau=0.1)
    >>> [round(float(v), 3) for v in y]
    [0.0, 0.0, 1.0, 1.0]
  """
  scores, k, tau = _prepare(scores, k, tau, vjp, implementation)
  dtype = validation.compute_dtype(scores.dtype)
  return _soft_topk_core(scores.astype(dtype), k, tau, vjp, implementation).astype(scores.dtype)


def gumbel_topk_relaxed(
  key: ArrayLike,
  scores: ArrayLike,
  k: int,
  tau: ArrayLike = 1.0,
  *,
  hard: bool = False,
  vjp: str = "recompute",
  implementation: str = "xla",
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
    implementation: "xla" or "cpu_kernel", as in `soft_topk`; with "cpu_kernel" on
      CPU the kernel draws the noise too, words, Gumbel transform and addition (the
      same noise bit for bit, checked against XLA at first use; 100 x 10,000 perturbed
      in 0.62 instead of 1.1-1.6 ms on 2 cores), in the same call as the relaxation
      unless `hard` (each row's noise drawn by the task that relaxes it; for more than
      2^22 scores the backward draws it again rather than keeping B x N floats).

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
  scores, k, tau = _prepare(scores, k, tau, vjp, implementation)
  if not isinstance(hard, bool):
    raise TypeError(f"hard must be a bool; got {type(hard).__name__}.")
  key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  dtype = validation.compute_dtype(scores.dtype)
  if (
    not hard and scores.size and gumbel.kernel_draws_noise(key, scores.shape, dtype, implementation)
  ):
    return _kernel_noise_or_xla(key, scores.astype(dtype), tau, k).astype(scores.dtype)
  perturbed = gumbel.perturb(key, scores, implementation)
  soft = _soft_topk_core(perturbed, k, tau, vjp, implementation)
  if hard:
    _, indices = jax.lax.top_k(perturbed, k)
    exact = gumbel.khot(indices, scores.shape[-1], dtype=soft.dtype)
    # x - x is exactly 0 for finite x, so the forward value stays exactly k-hot.
    soft = exact + (soft - jax.lax.stop_gradient(soft))
  return soft.astype(scores.dtype)
