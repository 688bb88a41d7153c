"""The embedding ConvNet of the dKNN experiments (Grover et al. 2019; Xie & Ermon 2019)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2 (floor), as a reshape and a max: its gradient is cheaper on
  XLA:CPU than `reduce_window`'s select-and-scatter."""
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2, :]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class PatchConv(nn.Module):
  """A square convolution computed as patches x matrix (im2col), stride 1.

  Same function and parameter shapes as `nn.Conv(features, (size, size))`; for
  few input channels the patches are small and the matmul (and its gradient)
  is cheaper than XLA:CPU's convolution backward.
  """

  features: int
  size: int = 5
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (self.size, self.size, channels, self.features)
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.padding == "SAME":
      lo = (self.size - 1) // 2
      x = jnp.pad(x, ((0, 0), (lo, self.size - 1 - lo), (lo, self.size - 1 - lo), (0, 0)))
    h, w = x.shape[1] - self.size + 1, x.shape[2] - self.size + 1
    patches = jnp.concatenate(
      [x[:, i : i + h, j : j + w, :] for i in range(self.size) for j in range(self.size)], axis=-1
    )
    return patches @ kernel.reshape(-1, self.features) + bias.reshape(1, 1, 1, -1)


def first_conv_and_pool(cpu_layers: bool, size: int, padding: str):
  """(a constructor `features -> first convolution`, the 2x2 max-pool): `PatchConv` and the
  reshape pool where `cpu_layers`, else `nn.Conv` and `nn.max_pool`; the same function."""
  if cpu_layers:
    return functools.partial(PatchConv, size=size, padding=padding), _max_pool_2x2
  conv = functools.partial(nn.Conv, kernel_size=(size, size), padding=padding)
  return conv, functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))


class ConvNet(nn.Module):
  """conv 5x5x20 -> ReLU -> max-pool 2 -> conv 5x5x50 -> ReLU -> max-pool 2 -> dense -> ReLU.

  On 28x28x1 inputs with `padding="VALID"` this is the reference network
  (800 -> 500 dense, a 500-d embedding). `padding="SAME"` lets it run on
  smaller images such as scikit-learn's 8x8 digits. The first convolution is
  computed as patches x matrix (`PatchConv`), the same function as `nn.Conv`.

  Attributes:
    embedding_dim: output size (500 in the reference).
    padding: convolution padding, "VALID" (reference) or "SAME".
    cpu_layers: the first convolution as `PatchConv` and the pooling as a reshape (True),
      or `nn.Conv` and `nn.max_pool` (False); the same function.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from dknn.models import ConvNet
    >>> net = ConvNet()
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> net.apply(params, jnp.zeros((4, 28, 28, 1))).shape
    (4, 500)
  """

  embedding_dim: int = 500
  padding: str = "VALID"
  # The first convolution as patches x matrix and pooling as a reshape and a max; False:
  # `nn.Conv` and `nn.max_pool` (`benchmarks/bench_model_layers.py` times both).
  cpu_layers: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, C]` images -> `[B, embedding_dim]` non-negative embeddings."""
    if images.ndim != 4:
      raise ValueError(
        f"images must have shape [batch, height, width, channels]; got shape {images.shape} "
        "(add a channel axis with images[..., None])."
      )
    # Each stage takes (size - 4) // 2 with VALID padding and size // 2 with SAME.
    smallest = 16 if self.padding == "VALID" else 4
    if min(images.shape[1:3]) < smallest:
      raise ValueError(
        f"images of {images.shape[1]} x {images.shape[2]} are too small for "
        f'padding="{self.padding}": it needs at least {smallest} x {smallest}'
        + (' (use padding="SAME" for smaller images).' if self.padding == "VALID" else ".")
      )
    first_conv, pool = first_conv_and_pool(self.cpu_layers, 5, self.padding)
    x = pool(nn.relu(first_conv(20)(images)))
    x = nn.Conv(50, (5, 5), padding=self.padding)(x)
    x = pool(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    return nn.relu(nn.Dense(self.embedding_dim)(x))


class VGGNet(nn.Module):
  """(conv 3x3x32 -> ReLU) x 2 -> max-pool 2 -> (conv 3x3x64 -> ReLU) x 2 -> max-pool 2 ->
  dense -> ReLU, every convolution with SAME padding.

  A larger embedding network than the reference `ConvNet`: four convolutions instead of
  two, 1.6 million parameters instead of 0.43 million at 28x28 (most in the dense layer on
  the 7x7x64 features), with the same (Flax default) initialisation.

  With `normalize`, every convolution is followed by a group normalisation (8 groups) and
  the dense layer by a layer normalisation, each before its ReLU, as the batch
  normalisations of a ResNet: the embedding's scale is then set by the last normalisation's
  learned scale alone instead of by the product of five layers' weights, which the dKNN
  loss rewards for growing (a larger scale sharpens the relaxed top-k). Group and layer
  normalisation use no batch statistics, so training and evaluation compute the same
  function.

  Attributes:
    embedding_dim: output size.
    channels: the two blocks' convolution widths.
    cpu_layers: the first convolution as `PatchConv` and the pooling as a reshape (True),
      or `nn.Conv` and `nn.max_pool` (False); the same function.
    normalize: group-normalise every convolution's output and layer-normalise the dense
      layer's, before the ReLU.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from dknn.models import VGGNet
    >>> net = VGGNet()
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> net.apply(params, jnp.zeros((4, 28, 28, 1))).shape
    (4, 500)
  """

  embedding_dim: int = 500
  channels: tuple[int, int] = (32, 64)
  cpu_layers: bool = True
  normalize: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, C]` images (H, W >= 4) -> `[B, embedding_dim]` non-negative embeddings."""
    if images.ndim != 4 or min(images.shape[1:3]) < 4:
      raise ValueError(
        "images must have shape [batch, height, width, channels] with height and width at "
        f"least 4; got shape {images.shape}."
      )
    first_conv, pool = first_conv_and_pool(self.cpu_layers, 3, "SAME")
    x = images
    for block, width in enumerate(self.channels):
      for layer in range(2):
        conv = first_conv(width) if block == layer == 0 else nn.Conv(width, (3, 3))
        x = conv(x)
        if self.normalize:
          x = nn.GroupNorm(num_groups=8)(x)
        x = nn.relu(x)
      x = pool(x)
    x = nn.Dense(self.embedding_dim)(x.reshape(x.shape[0], -1))
    if self.normalize:
      x = nn.LayerNorm()(x)
    return nn.relu(x)


# The embedding networks by the name that `--model` takes.
MODELS = {
  "convnet": ConvNet,
  "vgg": VGGNet,
  "vgg_norm": functools.partial(VGGNet, normalize=True),
}
