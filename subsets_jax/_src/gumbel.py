"""Exact sampling without replacement by Gumbel-top-k, and k-hot encoding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import threefry, validation


def noise(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """`jax.random.gumbel(key, shape, dtype)` bit for bit; on CPU by `threefry` where it applies."""
  if not threefry.applies(key, shape, dtype):
    return jax.random.gumbel(key, shape, dtype)
  return jax.lax.platform_dependent(
    key,
    cpu=lambda k: threefry.gumbel(k, shape, dtype),
    default=lambda k: jax.random.gumbel(k, shape, dtype),
  )


def perturb(key: jax.Array, scores: jax.Array, dtype) -> jax.Array:
  """`scores + noise` in the compute `dtype`: the keys that `gumbel_topk` ranks (under `jit`).

  `gumbel_topk_relaxed` relaxes the same keys, so its `hard=True` value encodes the items
  that `gumbel_topk` returns for the same key.
  """
  return scores.astype(dtype) + noise(key, scores.shape, dtype)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _gumbel_noise(key, *, shape, dtype):
  return noise(key, shape, dtype)


def gumbel_noise(key: ArrayLike, scores) -> jax.Array:
  """The Gumbel noise that every sampler here adds to `scores` for `key`.

  Exactly `jax.random.gumbel(key, scores.shape, dtype)`, bit for bit, with `dtype`
  float32, or float64 for float64 scores, so that all functions agree for the same
  key: `gumbel_topk(key, s, k)` is `lax.top_k(s + gumbel_noise(key, s), k)[1]`.

  Args:
    key: a PRNG key (`jax.random.key` or a raw `uint32[2]` key).
    scores: `[..., n]` real floating array, or a `jax.ShapeDtypeStruct`; only its shape
      and dtype are used.

  Returns:
    `[..., n]` standard Gumbel noise, float32 (float64 for float64 scores).

  Raises:
    TypeError: `key` is not a PRNG key; `scores` is not a real floating array.
    ValueError: `scores` is a scalar.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> g = sj.gumbel_noise(jax.random.key(0), jnp.zeros((2, 3), jnp.bfloat16))
    >>> g.shape, g.dtype
    ((2, 3), dtype('float32'))

  References:
    Gumbel, "Statistical Theory of Extreme Values and Some Practical Applications", 1954;
    Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011
    (Threefry, JAX's default generator).
  """
  validation.check_shape_source(scores)
  key = validation.check_key(key)
  dtype = validation.compute_dtype(scores.dtype)
  return _gumbel_noise(key, shape=tuple(scores.shape), dtype=dtype)


@functools.partial(jax.jit, static_argnames=("k",))
def _gumbel_topk(key, scores, *, k):
  dtype = validation.compute_dtype(scores.dtype)
  return jax.lax.top_k(perturb(key, scores, dtype), k)[1].astype(jnp.int32)


def gumbel_topk(key: ArrayLike, scores: ArrayLike, k: int) -> jax.Array:
  r"""Draws `k` items without replacement, with probability proportional to weights.

  With weights :math:`w_i = e^{s_i}` and :math:`Z = \sum_i w_i`, the ordered draw
  :math:`(i_1, \dots, i_k)` has probability (the Plackett-Luce model)

  .. math::

     P(i_1, \dots, i_k) = \prod_{j=1}^k \frac{w_{i_j}}{Z - \sum_{l<j} w_{i_l}}.

  It is sampled exactly by the Gumbel-top-k trick: add i.i.d. standard Gumbel noise to
  `scores` and keep the `k` largest keys. Cost O(n log k) per row.

  Args:
    key: a PRNG key; its noise is `gumbel_noise(key, scores)`.
    scores: `[..., n]` unnormalised log-weights; `-inf` excludes an item.
    k: number of items to draw, a Python int with `1 <= k <= n` (static under `jit`).

  Returns:
    int32 `[..., k]` item indices in draw order (descending perturbed score). Items with
    score `-inf` are never drawn while a row has `k` finite scores; concrete scores with
    fewer are rejected (under `jit` such a row is filled with `-inf` items). The indices
    of a row with traced NaN or `+inf` scores are unspecified, and equal to those that
    `gumbel_topk_relaxed(..., hard=True)` encodes.

  Raises:
    TypeError: `key` is not a PRNG key, `k` is not an int, or `scores` is not a real
      floating array.
    ValueError: `k` is out of range, or concrete `scores` hold NaN, `+inf`, or fewer
      than `k` finite entries in a row.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> idx = sj.gumbel_topk(jax.random.key(0), jnp.log(jnp.array([.1, .2, .3, .4])), 2)
    >>> idx.shape, idx.dtype
    ((2,), dtype('int32'))

  References:
    Vieira, "Gumbel-max trick and weighted reservoir sampling", 2014; Kool, van Hoof &
    Welling, "Stochastic Beams and Where to Find Them", ICML 2019.
  """
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  validation.check_enough_finite(scores, k)
  key = validation.check_key(key)
  return _gumbel_topk(key, scores, k=k)


def khot_core(indices: jax.Array, n: int, dtype) -> jax.Array:
  """k-hot `[..., n]` of integer `[..., k]` indices (no checks; for use under `jit`)."""
  batch = indices.shape[:-1]
  flat = indices.reshape(-1, indices.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  out = jnp.zeros((flat.shape[0], n), dtype).at[rows, flat].set(1)
  return out.reshape(*batch, n)


_khot = jax.jit(khot_core, static_argnums=(1, 2))


def khot(indices: ArrayLike, n: int, *, dtype=jnp.float32) -> jax.Array:
  """Encodes index sets as k-hot vectors.

  Args:
    indices: integer `[..., k]`, entries in `[0, n)`; a repeated index counts once.
    n: number of items, a Python int >= 1.
    dtype: output dtype (default float32).

  Returns:
    `[..., n]` array with ones at `indices` and zeros elsewhere.

  Raises:
    TypeError: `indices` is not an integer array.
    ValueError: `n` is not an int >= 1, `indices` is a scalar, or concrete `indices`
      lie outside `[0, n)`.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> sj.khot(jnp.array([2, 0]), 4)
    Array([1., 0., 1., 0.], dtype=float32)
  """
  n = validation.check_positive_int(n, "n")
  indices = validation.as_array(indices, "indices")
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"indices must be an integer array; got dtype {indices.dtype}.")
  if indices.ndim < 1:
    raise ValueError("indices must have rank >= 1 (the k indices on the last axis).")
  validation.check_index_range(indices, n)
  return _khot(indices, n, jnp.dtype(dtype))
