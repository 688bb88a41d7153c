"""Bisection on a batch of brackets, for the quadratures' node placement."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def bisect(
  holds: Callable[[jax.Array], jax.Array], lo: jax.Array, hi: jax.Array, *, steps: int
) -> tuple[jax.Array, jax.Array]:
  """`steps` halvings of `[lo, hi]` for a predicate `holds(z)` true below a point, false above.

  Each bracket keeps the point: `holds(lo)` stays true and `holds(hi)` false wherever they
  were. Elementwise over the brackets' shape; returns the final `(lo, hi)`.
  """

  def halve(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    below = holds(mid)
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  return jax.lax.fori_loop(0, steps, halve, (lo, hi))
