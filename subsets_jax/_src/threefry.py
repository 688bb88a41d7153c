"""`jax.random.gumbel` for threefry keys, bit for bit, as one fused elementwise pass.

This is the CPU path of the library's Gumbel noise. JAX lowers its threefry hash on CPU
as a rolled `while` loop over full-size arrays (upstream, `jax._src.prng`: the loop keeps
CPU compiles short), so every one of its 20 rounds reads and writes the whole array. The
same hash written out (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011: Threefry-2x32, 20 rounds) fuses into a single pass. This module can go once
JAX unrolls the hash on CPU; benchmarks/bench_noise.py compares the two.

The counters, the bits-to-float map and the Gumbel transform follow `jax.random`'s
outputs; tests/test_gumbel.py checks equality with `jax.random.gumbel` bit for bit, so a
change in JAX shows there first.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32 (20 rounds) of the counter pairs `(x0, x1)` under the key `(k0, k1)`."""
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def applies(key: jax.Array, shape: tuple[int, ...], dtype) -> bool:
  """Whether `gumbel` reproduces `jax.random.gumbel(key, shape, dtype)` (else use that)."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
    return False
  if math.prod(shape) >= 2**32 or not jax.config.jax_threefry_partitionable:
    return False
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key.shape == () and str(jax.random.key_impl(key)) == "threefry2x32"
  # A raw uint32[2] key of the default implementation.
  return key.shape == (2,) and jax.config.jax_default_prng_impl == "threefry2x32"


def key_data(key: jax.Array) -> jax.Array:
  """The uint32[2] words of a threefry key (a typed key or raw key data)."""
  return jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key


# Jitted like `jax.random.gumbel`: called eagerly, op-by-op dispatch would round the
# uniform's multiply-add apart from the fused (contracted) one.
@functools.partial(jax.jit, static_argnums=(1, 2), inline=True)
def gumbel(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """`jax.random.gumbel(key, shape, dtype)` (default mode) where `applies(...)`."""
  data = key_data(key)
  k0, k1 = data[0], data[1]
  # Counter of element i: (high, low) words of i as a 64-bit number (< 2^32 here).
  low = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  b0, b1 = _threefry2x32(k0, k1, jnp.zeros_like(low), low)
  if jnp.finfo(dtype).bits == 32:
    return gumbel_from_bits(b0 ^ b1, dtype)
  return gumbel_from_bits((b0.astype(jnp.uint64) << np.uint64(32)) | b1.astype(jnp.uint64), dtype)


@functools.partial(jax.jit, static_argnums=(1,), inline=True)
def gumbel_from_bits(bits: jax.Array, dtype) -> jax.Array:
  """`jax.random.gumbel`'s transform of its random words (uint32 for float32, else uint64)."""
  finfo = jnp.finfo(dtype)
  uint = jnp.uint32 if finfo.bits == 32 else jnp.uint64
  # Uniform on [tiny, 1): the top mantissa bits under the exponent of 1.0, minus 1.
  one = np.array(1.0, dtype).view(uint)
  mantissa = (bits >> uint(finfo.bits - finfo.nmant)) | one
  floats = jax.lax.bitcast_convert_type(mantissa, dtype) - jnp.asarray(1, dtype)
  tiny = jnp.asarray(finfo.tiny, dtype)
  u = jnp.maximum(tiny, floats * (jnp.asarray(1, dtype) - tiny) + tiny)
  return -jnp.log(-jnp.log(u))
