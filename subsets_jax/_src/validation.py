"""Argument checks shared by the public functions.

Checks on shapes, dtypes and Python hyperparameters always run (they are static
under `jit`). Checks on *values* (finite tau, index ranges, enough finite
scores) only run when the value is concrete: under `jit` the documented traced
behaviour applies instead, because a value check there would force a host sync.
"""

from __future__ import annotations

import operator
import weakref

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
  """True when `x` holds a value known on the host (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def check_k(k, n: int, *, name: str = "k") -> int:
  """`k` must be a Python int (static under jit) with 1 <= k <= n."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise TypeError(
      f"{name} must be a Python int (it fixes output shapes, so it is static "
      f"under jit); got {type(k).__name__}."
    )
  k = operator.index(k)
  if not 1 <= k <= n:
    raise ValueError(f"{name} must satisfy 1 <= {name} <= n = {n}; got {name}={k}.")
  return k


def check_positive_int(value, name: str) -> int:
  """A Python int >= 1 (a static size or count)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a Python int >= 1; got {value!r}.")
  return value


def _check_floating(dtype, name: str) -> None:
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must be a real floating array (log-weights); got dtype {dtype}.")


def _check_has_item_axis(shape, name: str) -> None:
  if len(shape) < 1:
    raise ValueError(f"{name} must have rank >= 1 (items on the last axis); got a scalar.")


def as_array(x, name: str) -> jax.Array:
  """`x` as a `jax.Array` (arrays, NumPy arrays, Python scalars and nested lists)."""
  if isinstance(x, jax.Array):
    return x
  if x is None or isinstance(x, (str, bytes, dict, set)):
    raise TypeError(f"{name} must be an array; got {type(x).__name__}.")
  try:
    host = np.asarray(x)
  except (TypeError, ValueError) as err:
    raise TypeError(f"{name} must be an array; got {type(x).__name__} ({err}).") from None
  if host.dtype == object:
    raise TypeError(f"{name} must be a numeric array; got {type(x).__name__} of mixed types.")
  if host.dtype.kind not in "biufc":
    kind = type(x).__name__
    raise TypeError(f"{name} must be a numeric array; got {kind} of dtype {host.dtype}.")
  return jnp.asarray(host)


@jax.jit
def _value_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Whether `x` [..., n] holds NaN or +inf, and the fewest finite entries of a row: one
  fused reduction on the array's device, so that a check moves two scalars to the host
  instead of the array."""
  bad = jnp.any(jnp.isnan(x) | (x == jnp.inf))
  fewest = jnp.min(jnp.sum(jnp.isfinite(x), axis=-1), initial=x.shape[-1])
  return bad, fewest


_last_stats: tuple[weakref.ref, tuple[bool, int]] | None = None


def value_stats(x: jax.Array) -> tuple[bool, int]:
  """`_value_stats` of a concrete array on the host; the checks of one call share it (the
  last array's result is kept, by weak reference)."""
  global _last_stats
  if _last_stats is not None and _last_stats[0]() is x:
    return _last_stats[1]
  # A concrete array may be a constant inside a function being traced: evaluate now.
  with jax.ensure_compile_time_eval():
    bad, fewest = jax.device_get(_value_stats(x))
  stats = (bool(bad), int(fewest))
  _last_stats = (weakref.ref(x), stats)
  return stats


def check_scores(scores, *, name: str = "scores") -> jax.Array:
  """Real floating array of rank >= 1; returns it as a `jax.Array`."""
  scores = as_array(scores, name)
  _check_floating(scores.dtype, name)
  _check_has_item_axis(scores.shape, name)
  if scores.shape[-1] < 1:
    raise ValueError(f"{name} must have at least one item on its last axis.")
  if is_concrete(scores) and scores.size and value_stats(scores)[0]:
    raise ValueError(f"{name} must not contain NaN or +inf (use -inf to exclude an item).")
  return scores


def check_shape_source(scores, *, name: str = "scores") -> None:
  """An array (or `jax.ShapeDtypeStruct`) whose shape and dtype alone are used.

  Real floating, rank >= 1; its values are not read (no host transfer).
  """
  if not (hasattr(scores, "shape") and hasattr(scores, "dtype")):
    raise TypeError(
      f"{name} must be an array (only its shape and dtype are used; for a shape alone "
      f"pass jax.ShapeDtypeStruct(shape, dtype)); got {type(scores).__name__}."
    )
  _check_floating(scores.dtype, name)
  _check_has_item_axis(scores.shape, name)


def check_enough_finite(scores: jax.Array, k: int, *, name: str = "scores") -> None:
  """Concrete scores need at least `k` finite entries in every row (a batch of no rows has
  none to check)."""
  if is_concrete(scores) and scores.size:
    fewest = value_stats(scores)[1]
    if fewest < k:
      raise ValueError(
        f"every row of {name} needs at least k={k} finite entries (-inf marks an "
        f"excluded item); a row has only {fewest}."
      )


def check_tau(tau, *, name: str = "tau", allow_zero: bool = False):
  """`tau` is a real scalar; when concrete it must be finite and > 0 (>= 0 with
  `allow_zero`). Returns it."""
  if isinstance(tau, bool) or not isinstance(tau, (int, float, np.ndarray, np.number, jax.Array)):
    raise TypeError(
      f"{name} must be a real scalar (a Python float or a 0-d array); got {type(tau).__name__}."
    )
  dtype = jnp.result_type(tau)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"{name} must be a real scalar; got dtype {dtype}.")
  if jnp.ndim(tau) != 0:
    raise ValueError(f"{name} must be a scalar; got shape {jnp.shape(tau)}.")
  if is_concrete(tau):
    value = float(tau)
    if not (np.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
      bound = ">= 0" if allow_zero else "> 0"
      raise ValueError(f"{name} must be finite and {bound}; got {value}.")
  return tau


def check_key(key, *, name: str = "key") -> jax.Array:
  """A single PRNG key: a typed key array of shape () or raw uint32[2] key data."""
  if isinstance(key, jax.Array) or isinstance(key, np.ndarray):
    dtype = key.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      if key.shape != ():
        raise ValueError(
          f"{name} must be a single PRNG key (shape ()); got shape {key.shape} "
          "(use jax.vmap over keys)."
        )
      return key
    if dtype == np.uint32 and key.shape == (2,):
      return jnp.asarray(key)
  raise TypeError(
    f"{name} must be a PRNG key from jax.random.key(seed) (or raw uint32[2] key data "
    f"from jax.random.PRNGKey); got {_describe(key)}."
  )


def _describe(x) -> str:
  if hasattr(x, "dtype") and hasattr(x, "shape"):
    return f"{type(x).__name__} of dtype {x.dtype} and shape {tuple(x.shape)}"
  return type(x).__name__


def check_index_range(indices: jax.Array, n: int, *, name: str = "indices") -> None:
  """Concrete integer `indices` must lie in [0, n)."""
  if is_concrete(indices) and indices.size:
    host = np.asarray(indices)
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= n:
      raise ValueError(f"{name} must lie in [0, n) = [0, {n}); got values in [{lo}, {hi}].")


def check_indices(indices, scores: jax.Array, *, name: str = "indices") -> jax.Array:
  """Integer `[..., k]` with the scores' batch shape, distinct entries in [0, n)."""
  indices = as_array(indices, name)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array; got dtype {indices.dtype}.")
  n = scores.shape[-1]
  if indices.ndim != scores.ndim or indices.shape[:-1] != scores.shape[:-1]:
    raise ValueError(
      f"{name} must have shape scores.shape[:-1] + (k,) = {scores.shape[:-1]} + (k,); "
      f"got {indices.shape}."
    )
  check_k(indices.shape[-1], n, name=f"{name}.shape[-1] (k)")
  check_index_range(indices, n, name=name)
  if is_concrete(indices) and indices.size:
    ordered = np.sort(np.asarray(indices), axis=-1)
    if (ordered[..., 1:] == ordered[..., :-1]).any():
      raise ValueError(
        f"{name} must not repeat an item within a row (sampling is without replacement)."
      )
  return indices


def compute_dtype(dtype) -> jnp.dtype:
  """Float32 at least: half precisions are upcast, float64 stays float64."""
  return jnp.promote_types(dtype, jnp.float32)


def bad_rows(x: jax.Array) -> jax.Array:
  """`[..., 1]`: whether a row of `[..., n]` holds NaN or +inf (for use under `jit`)."""
  return jnp.any(jnp.isnan(x) | (x == jnp.inf), axis=-1, keepdims=True)


def nan_where(bad: jax.Array, out: jax.Array) -> jax.Array:
  """`out` with NaN wherever `bad` (broadcast) holds: NaN in, NaN out."""
  return jnp.where(bad, jnp.asarray(jnp.nan, out.dtype), out)
