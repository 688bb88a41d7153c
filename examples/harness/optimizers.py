"""Optimisers shared across runs in one process.

An optimiser is a static part of a `TrainState`: the jitted steps' caches are keyed on its
identity. One object per setting lets a later run in the same process (a resumed run, a sweep
in a notebook) reuse the compiled steps of an earlier one.
"""

from __future__ import annotations

import functools

import optax


@functools.lru_cache(maxsize=16)
def adam(learning_rate: float) -> optax.GradientTransformation:
  """`optax.adam(learning_rate)`, the same object for the same learning rate."""
  return optax.adam(learning_rate)
