"""Prototype: the relaxed top-k forward as one Pallas (Triton) kernel per row, for GPUs.

Not part of the library: a measured experiment for issue 4's "Pallas kernel" next step.
Each program owns one row of `b = (scores - row max) / tau` and runs all k steps, one
pass over the row per step: the pass applies step j (p = exp((b - m) - log s),
b += log(1 - p) / tau, total += p) with the row's shift `m` and normaliser `s` from the
pass before, and gathers step j + 1's statistics of the new b on the fly (chunk by
chunk: max, sum of exp, sum over the non-maximal items, runner-up; merged online as in
a streaming softmax). XLA's version needs about four passes and a host round trip
(`lax.cond`) per step. The row itself does not fit on chip at n = 60,000 (240 KB), so
it stays in global memory (the L2 cache holds it).

It returns the same per-step scalars as the library's forward (shift, log s,
log(1 - p_top), 1 / (1 - p_top)), in the library's `[k, 4, rows, 1]` layout, so the
library's analytic backward can run on them. `log(1 - p)` uses `log1p` here (the
library uses its own series), so values agree to rounding, not bitwise; the backward's
replay could then pick a different "dominant" item at an exact tie (p = 1/2): fine for
timing, one reason this stays a prototype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from subsets_jax._src import relaxed_topk

# The library's floor on the other items' weight (float32), below which the runner-up
# gap stands in for log(1 - p_top).
_OTHERS_FLOOR = relaxed_topk._OTHERS_FLOOR[jnp.dtype(jnp.float32)]


def _chunk_stats(b, valid):
  """(max, sum exp(b - max), same over the non-maximal items, runner-up) of one chunk."""
  neg_inf = jnp.float32(-jnp.inf)
  b = jnp.where(valid, b, neg_inf)
  m = jnp.max(b)
  e = jnp.exp(b - jnp.where(m > neg_inf, m, 0.0))
  is_max = b == m
  return m, jnp.sum(e), jnp.sum(jnp.where(is_max, 0.0, e)), jnp.max(jnp.where(is_max, neg_inf, b))


def _merge(stats, chunk):
  """Online merge of (max, sum, others, runner-up) of the row so far with a chunk's."""
  m, s, o, r = stats
  mc, sc, oc, rc = chunk
  mn = jnp.maximum(m, mc)
  # exp(x - mn), with x = mn (possibly -inf) giving exactly 1.
  scale = lambda x: jnp.where(x == mn, 1.0, jnp.exp(x - jnp.where(mn > -jnp.inf, mn, 0.0)))
  s_new = s * scale(m) + sc * scale(mc)
  o_new = jnp.where(m == mn, o, s * scale(m)) + jnp.where(mc == mn, oc, sc * scale(mc))
  r_new = jnp.maximum(jnp.where(m == mn, r, m), jnp.where(mc == mn, rc, mc))
  return mn, s_new, o_new, r_new


def _row_kernel(
  b0_ref, tau_ref, total_ref, b_ref, m_ref, ls_ref, l1t_ref, inv_ref, *, k, chunk, barrier
):
  n = b0_ref.shape[0]
  chunks = pl.cdiv(n, chunk)
  tau = tau_ref[...]
  slots = jnp.arange(m_ref.shape[0])
  empty = (jnp.float32(-jnp.inf), jnp.float32(0.0), jnp.float32(0.0), jnp.float32(-jnp.inf))

  def first_pass(i, stats):
    idx = i * chunk + jnp.arange(chunk)
    valid = idx < n
    b = plgpu.load(b0_ref.at[idx], mask=valid, other=-jnp.inf)
    plgpu.store(b_ref.at[idx], b, mask=valid)
    plgpu.store(total_ref.at[idx], jnp.zeros_like(b), mask=valid)
    return _merge(stats, _chunk_stats(b, valid))

  stats = jax.lax.fori_loop(0, chunks, first_pass, empty)
  if barrier:
    plgpu.debug_barrier()

  def step(j, carry):
    (m, s, others, runner_up), aux = carry
    m_safe = jnp.where(m > -jnp.inf, m, 0.0)
    s_safe = jnp.where(s > 0, s, 1.0)
    log_s = jnp.log(s_safe)
    use_log = others > _OTHERS_FLOOR
    gap = jnp.where((~use_log) & (s_safe < 2) & (runner_up > -jnp.inf), runner_up - m_safe, 0.0)
    log1m_top = jnp.where(use_log, jnp.log(jnp.where(use_log, others, 1.0)), gap) - log_s
    inv_share = jnp.where(use_log, jnp.exp(-jnp.where(use_log, log1m_top, 0.0)), 0.0)
    aux = tuple(
      jnp.where(slots == j, value, vec)
      for value, vec in zip((m_safe, log_s, log1m_top, inv_share), aux, strict=True)
    )

    def update(i, stats):
      idx = i * chunk + jnp.arange(chunk)
      valid = idx < n
      b = plgpu.load(b_ref.at[idx], mask=valid, other=-jnp.inf)
      total = plgpu.load(total_ref.at[idx], mask=valid, other=0.0)
      p = jnp.exp((b - m_safe) - log_s)
      dominant = p > 0.5
      log1m = jnp.where(dominant, log1m_top, jnp.log1p(-jnp.where(dominant, 0.0, p)))
      b = b + log1m / tau
      plgpu.store(b_ref.at[idx], b, mask=valid)
      plgpu.store(total_ref.at[idx], total + p, mask=valid)
      return _merge(stats, _chunk_stats(b, valid))

    stats = jax.lax.fori_loop(0, chunks, update, empty)
    if barrier:
      plgpu.debug_barrier()
    return stats, aux

  zeros = jnp.zeros(m_ref.shape, jnp.float32)
  _, aux = jax.lax.fori_loop(0, k, step, (stats, (zeros, zeros, zeros, zeros)))
  for ref, vec in zip((m_ref, ls_ref, l1t_ref, inv_ref), aux, strict=True):
    ref[...] = vec


@functools.partial(jax.jit, static_argnames=("k", "chunk", "num_warps", "interpret"))
def forward_rows(b0, tau, k, *, chunk=2048, num_warps=8, interpret=False):
  """Sum of the k softmaxes of `[r, n]` float32 rows `b0` (scaled units) and the aux scalars.

  Returns `(total [r, n], aux [k, 4, r, 1])`, as the library's `_forward_rows`.
  """
  n = b0.shape[-1]
  chunk = min(chunk, max(16, pl.next_power_of_2(n)))
  slots = max(2, pl.next_power_of_2(k))
  vec = jax.ShapeDtypeStruct((slots,), jnp.float32)
  row = jax.ShapeDtypeStruct((n,), jnp.float32)
  call = pl.pallas_call(
    functools.partial(_row_kernel, k=k, chunk=chunk, barrier=not interpret),
    out_shape=(row, row, vec, vec, vec, vec),
    grid=(),
    compiler_params=None if interpret else plgpu.CompilerParams(num_warps=num_warps),
    interpret=interpret,
    name="relaxed_topk_row",
  )
  total, _, *aux = jax.vmap(call, in_axes=(0, None))(b0, jnp.asarray(tau, jnp.float32))
  aux = jnp.stack(aux)[:, :, :k]  # [4, r, k]
  return total, jnp.transpose(aux, (2, 0, 1))[..., None]


def scaled_rows(scores, tau):
  """The library's input transform: `(scores - row max) / tau`, -inf kept."""
  return relaxed_topk._scaled_rows(scores, jnp.asarray(tau, scores.dtype))


def soft_topk(scores, k, tau=1.0, **kwargs):
  """`subsets_jax.soft_topk` on `[r, n]` float32 scores, forward only, through the kernel."""
  return forward_rows(scaled_rows(scores, tau), tau, k, **kwargs)[0]
