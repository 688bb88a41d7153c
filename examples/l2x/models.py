"""L2X's explainer and approximator (Chen et al. 2018, the synthetic experiments)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# ReLU for XOR and orange skin, SELU for the additive and switch data (the authors' code).
ACTIVATIONS = {"relu": nn.relu, "selu": nn.selu}


class Explainer(nn.Module):
  """Ten features -> ten selection logits: Dense(100), Dense(100), Dense(10)."""

  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    x = act(nn.Dense(100)(x))
    x = act(nn.Dense(100)(x))
    return nn.Dense(10)(x)


class Approximator(nn.Module):
  """The selected features -> two class logits: Dense(200), BN, Dense(200), BN, Dense(2)."""

  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    # Keras's BatchNormalization defaults, as in the authors' code.
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)
    x = norm()(act(nn.Dense(200)(x)))
    x = norm()(act(nn.Dense(200)(x)))
    return nn.Dense(2)(x)


def l2_penalty(params) -> jax.Array:
  """The sum of squares of every Dense kernel (Keras's `l2` kernel regulariser)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  return sum(
    jnp.sum(leaf**2) for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"
  )
