"""The embedding ConvNet of the dKNN experiments (Grover et al. 2019; Xie & Ermon 2019)."""

from __future__ import annotations

import flax.linen as nn
import jax


class ConvNet(nn.Module):
  """conv 5x5x20 -> ReLU -> max-pool 2 -> conv 5x5x50 -> ReLU -> max-pool 2 -> dense -> ReLU.

  On 28x28x1 inputs with `padding="VALID"` this is the reference network
  (800 -> 500 dense, a 500-d embedding). `padding="SAME"` lets it run on
  smaller images such as scikit-learn's 8x8 digits.

  Attributes:
    embedding_dim: output size (500 in the reference).
    padding: convolution padding, "VALID" (reference) or "SAME".

  Example:
    >>> import jax, jax.numpy as jnp
    >>> net = ConvNet()
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> net.apply(params, jnp.zeros((4, 28, 28, 1))).shape
    (4, 500)
  """

  embedding_dim: int = 500
  padding: str = "VALID"

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, C]` images -> `[B, embedding_dim]` non-negative embeddings."""
    x = nn.Conv(20, (5, 5), padding=self.padding)(images)
    x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = nn.Conv(50, (5, 5), padding=self.padding)(x)
    x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.embedding_dim)(x))
