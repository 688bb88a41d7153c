"""The discrete VAE's encoder and decoder: the MLPs of the SIMPLE authors' DVAE notebook."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

# Keras' Dense default, which the notebook's models use.
_KERNEL_INIT = nn.initializers.glorot_uniform()


class MLP(nn.Module):
  """ReLU hidden layers, then a linear output layer."""

  hidden: Sequence[int]
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, kernel_init=_KERNEL_INIT)(x))
    return nn.Dense(self.out, kernel_init=_KERNEL_INIT)(x)


def encoder(groups: int, items: int) -> MLP:
  """784 -> 512 -> 256 -> groups * items logits."""
  return MLP((512, 256), groups * items)


def decoder(pixels: int = 784) -> MLP:
  """groups * items (the k-hot latents, flattened) -> 256 -> 512 -> pixel logits."""
  return MLP((256, 512), pixels)
