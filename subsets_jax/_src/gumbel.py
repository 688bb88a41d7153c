"""Exact sampling without replacement by Gumbel-top-k, and k-hot encoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import cpu_kernel, threefry, validation


def gumbel_noise(key: ArrayLike, scores: jax.Array) -> jax.Array:
  """The Gumbel noise that every sampler here adds to `scores` for `key`.

  Exactly `jax.random.gumbel(key, scores.shape, dtype)` with `dtype` float32, or
  float64 for float64 scores (bit for bit; for threefry keys on CPU computed by a
  fused copy of JAX's hash, 3x faster), so that all functions agree for the same key:
  `gumbel_topk(key, s, k)` is `lax.top_k(s + gumbel_noise(key, s), k)[1]`.

  Args:
    key: a PRNG key.
    scores: `[..., n]` real floating array, or a `jax.ShapeDtypeStruct`; only its shape
      and dtype are used.

  Returns:
    `[..., n]` standard Gumbel noise, float32 (float64 for float64 scores).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> g = gumbel_noise(jax.random.key(0), jnp.zeros((2, 3), jnp.bfloat16))
    >>> g.shape, g.dtype
    ((2, 3), dtype('float32'))
  """
  validation.check_shape_source(scores)
  return _noise(key, scores.shape, validation.compute_dtype(scores.dtype))


def _noise(key: ArrayLike, shape: tuple[int, ...], dtype, implementation: str = "xla"):
  """`jax.random.gumbel(key, shape, dtype)` bit for bit, faster on CPU for threefry keys.

  On CPU the hash runs as one fused XLA pass (JAX's CPU lowering of threefry is a rolled
  loop, 3x slower here; see `threefry`), or with `implementation="cpu_kernel"` (float32)
  its words come from the C++ kernel (the same integers; noise + perturbation at 6e6 words
  10.7 -> 5.4 ms on 2 cores) and XLA transforms them (`perturb` fuses all of it instead
  where it can).
  """
  key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  if not threefry.applies(key, shape, dtype):
    return jax.random.gumbel(key, shape, dtype)
  if implementation == "cpu_kernel" and dtype == jnp.float32:
    words = lambda k: cpu_kernel.threefry_bits(threefry.key_data(k), shape)
    cpu = lambda k: threefry.gumbel_from_bits(words(k), dtype)
  else:
    cpu = lambda k: threefry.gumbel(k, shape, dtype)
  return jax.lax.platform_dependent(
    key, cpu=cpu, default=lambda k: jax.random.gumbel(k, shape, dtype)
  )


def kernel_draws_noise(key: jax.Array, shape: tuple[int, ...], dtype, implementation: str) -> bool:
  """Whether the C++ kernel may draw and add the noise on CPU (`cpu_kernel.gumbel_perturb`):
  "cpu_kernel", float32, a threefry key, and a kernel transform checked to be XLA's."""
  return (
    implementation == "cpu_kernel"
    and dtype == jnp.float32
    and threefry.applies(key, shape, dtype)
    and cpu_kernel.gumbel_transform_is_xlas()
  )


def perturb(key: ArrayLike, scores: jax.Array, implementation: str = "xla") -> jax.Array:
  """`scores + g` in the compute dtype (float32 or float64), for validated `scores`.

  With `implementation="cpu_kernel"` (float32, threefry key, on CPU) one kernel pass draws
  the words, transforms them and adds them, where the kernel's transform has been checked to
  be XLA's bit for bit (`cpu_kernel.gumbel_transform_is_xlas`): the same values as
  `scores + gumbel_noise(key, scores)` either way.
  """
  dtype = validation.compute_dtype(scores.dtype)
  scores = scores.astype(dtype)
  key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  if not kernel_draws_noise(key, scores.shape, dtype, implementation):
    return scores + _noise(key, scores.shape, dtype, implementation)
  return jax.lax.platform_dependent(
    key,
    scores,
    cpu=lambda k, s: cpu_kernel.gumbel_perturb(threefry.key_data(k), s),
    default=lambda k, s: s + jax.random.gumbel(k, s.shape, dtype),
  )


def gumbel_topk(key: ArrayLike, scores: ArrayLike, k: int) -> jax.Array:
  """Draws `k` items without replacement, with probability proportional to weights.

  With weights `w_i = exp(scores_i)` and `Z = sum_i w_i`, the ordered draw
  `(i_1, ..., i_k)` has probability

      P(i_1, ..., i_k) = prod_j w_{i_j} / (Z - sum_{l<j} w_{i_l})

  (the Plackett-Luce model). It is sampled exactly by the Gumbel-top-k trick:
  add i.i.d. standard Gumbel noise to `scores` and keep the `k` largest keys
  (Vieira 2014; Kool et al., ICML 2019). Cost O(n log k) per row.

  Args:
    key: a PRNG key; its noise is `jax.random.gumbel(key, scores.shape, f32)`
      (float64 for float64 scores).
    scores: `[..., n]` unnormalised log-weights; `-inf` excludes an item.
    k: number of items to draw, a Python int with `1 <= k <= n`.

  Returns:
    int32 `[..., k]` item indices in draw order (descending perturbed score).
    Items with score `-inf` are never drawn while a row has `k` finite scores;
    concrete scores with fewer are rejected (under `jit` such a row is filled
    with `-inf` items).

  Raises:
    TypeError: if `k` is not an int or `scores` is not a real float array.
    ValueError: if `k` is out of range, or concrete `scores` hold NaN, `+inf`,
      or fewer than `k` finite entries in a row.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> idx = gumbel_topk(jax.random.key(0), jnp.log(jnp.array([.1, .2, .3, .4])), 2)
    >>> idx.shape, idx.dtype
    ((2,), dtype('int32'))
  """
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  validation.check_enough_finite(scores, k)
  _, indices = jax.lax.top_k(perturb(key, scores), k)
  return indices.astype(jnp.int32)


def khot(indices: ArrayLike, n: int, *, dtype=jnp.float32) -> jax.Array:
  """Encodes index sets as k-hot vectors.

  Args:
    indices: integer `[..., k]`, entries in `[0, n)`; a repeated index counts once.
    n: number of items, a Python int >= 1.
    dtype: output dtype (default float32).

  Returns:
    `[..., n]` array with ones at `indices` and zeros elsewhere.

  Example:
    >>> khot(jnp.array([2, 0]), 4)
    Array([1., 0., 1., 0.], dtype=float32)
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"n must be a Python int >= 1; got {n!r}.")
  if not jnp.issubdtype(jnp.result_type(indices), jnp.integer):
    raise TypeError(f"indices must be an integer array; got dtype {jnp.result_type(indices)}.")
  indices = jnp.asarray(indices)
  if indices.ndim < 1:
    raise ValueError("indices must have rank >= 1 (the k indices on the last axis).")
  validation.check_index_range(indices, n)
  batch = indices.shape[:-1]
  flat = indices.reshape(-1, indices.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  out = jnp.zeros((flat.shape[0], n), dtype).at[rows, flat].set(1)
  return out.reshape(*batch, n)
