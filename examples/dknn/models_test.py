"""ConvNet and VGGNet: same function as the reference layers (lax convolutions, reduce_window
pooling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dknn.models import ConvNet, VGGNet


def _conv(x, layer, padding):
  y = jax.lax.conv_general_dilated(
    x,
    layer["kernel"],
    (1, 1),
    padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return y + layer["bias"].reshape(1, 1, 1, -1)


def _pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _dense_relu(x, dense):
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ dense["kernel"] + dense["bias"][None, :])


def reference_forward(params, images, padding):
  x = _pool(jax.nn.relu(_conv(images, params["PatchConv_0"], padding)))
  x = _pool(jax.nn.relu(_conv(x, params["Conv_0"], padding)))
  return _dense_relu(x, params["Dense_0"])


@pytest.mark.parametrize(
  "shape,padding", [((3, 28, 28, 1), "VALID"), ((5, 8, 8, 1), "SAME"), ((2, 13, 13, 3), "SAME")]
)
def test_matches_reference_layers(shape, padding, key):
  net = ConvNet(padding=padding)
  images = jax.random.uniform(key, shape)
  params = net.init(jax.random.key(1), images)["params"]
  ours = net.apply({"params": params}, images)
  assert ours.shape == (shape[0], 500)
  np.testing.assert_allclose(ours, reference_forward(params, images, padding), atol=2e-5, rtol=1e-4)


def test_gradients_match_reference_layers(key):
  net = ConvNet()
  images = jax.random.uniform(key, (4, 28, 28, 1))
  params = net.init(jax.random.key(1), images)["params"]
  weights = jax.random.normal(jax.random.key(2), (4, 500))

  def objective(p, forward):
    return jnp.sum(weights * forward(p))

  ours = jax.grad(objective)(params, lambda p: net.apply({"params": p}, images))
  ref = jax.grad(objective)(params, lambda p: reference_forward(p, images, "VALID"))
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()), rtol=0)


@pytest.mark.parametrize(
  "shape,padding,match",
  [
    ((2, 8, 8, 1), "VALID", "too small"),
    ((2, 3, 3, 1), "SAME", "too small"),
    ((2, 28, 28), "VALID", "channel axis"),
  ],
)
def test_bad_images_are_rejected_with_a_clear_error(shape, padding, match):
  with pytest.raises(ValueError, match=match):
    ConvNet(padding=padding).init(jax.random.key(0), jnp.zeros(shape))


def vgg_reference_forward(params, images, normalize=False):
  """The VGG net from lax layers; with `normalize`, a NumPy group normalisation (8 groups)
  after each convolution and a NumPy layer normalisation after the dense layer, each before
  its ReLU."""
  # The four convolutions in order: PatchConv_0, Conv_0..2, or Conv_0..3.
  convs = sorted((n for n in params if "Conv" in n), key=lambda n: (n[0] != "P", n))
  assert len(convs) == 4
  x = images
  for i, name in enumerate(convs):
    y = _conv(x, params[name], "SAME")
    if normalize:
      y = jnp.asarray(_group_norm(y, 8, params[f"GroupNorm_{i}"]), jnp.float32)
    x = jax.nn.relu(y)
    if i % 2 == 1:
      x = _pool(x)
  if not normalize:
    return _dense_relu(x, params["Dense_0"])
  dense = np.asarray(x, np.float64).reshape(x.shape[0], -1) @ np.asarray(
    params["Dense_0"]["kernel"]
  )
  dense = dense + np.asarray(params["Dense_0"]["bias"])[None, :]
  ln = params["LayerNorm_0"]
  return np.maximum(_normalize(dense, (1,)) * np.asarray(ln["scale"]) + np.asarray(ln["bias"]), 0.0)


def _normalize(x, axes, eps=1e-6):
  """(x - mean) / sqrt(var + eps) over `axes`, in float64."""
  x = np.asarray(x, np.float64)
  return (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def _group_norm(x, groups, layer):
  b, h, w, c = x.shape
  g = _normalize(np.asarray(x).reshape(b, h, w, groups, c // groups), (1, 2, 4))
  return g.reshape(b, h, w, c) * np.asarray(layer["scale"]) + np.asarray(layer["bias"])


@pytest.mark.parametrize("cpu_layers", [True, False])
@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 13, 13, 3)])
def test_vgg_matches_reference_layers(shape, cpu_layers, key):
  net = VGGNet(embedding_dim=40, cpu_layers=cpu_layers)
  images = jax.random.uniform(key, shape)
  params = net.init(jax.random.key(1), images)["params"]
  ours = net.apply({"params": params}, images)
  assert ours.shape == (shape[0], 40)
  ref = vgg_reference_forward(params, images)
  np.testing.assert_allclose(ours, ref, atol=1e-5 * float(jnp.abs(ref).max()), rtol=1e-4)


def test_vgg_rejects_images_without_a_channel_axis():
  with pytest.raises(ValueError, match="channels"):
    VGGNet().init(jax.random.key(0), jnp.zeros((2, 28, 28)))


@pytest.mark.parametrize("cpu_layers", [True, False])
def test_vgg_norm_matches_reference_normalisations(cpu_layers, key):
  net = VGGNet(embedding_dim=40, cpu_layers=cpu_layers, normalize=True)
  images = jax.random.uniform(key, (3, 28, 28, 1))
  params = net.init(jax.random.key(1), images)["params"]
  # Non-trivial learned scales and biases, so that their placement is checked too.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(
    tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )
  ours = net.apply({"params": params}, images)
  ref = vgg_reference_forward(params, images, normalize=True)
  np.testing.assert_allclose(ours, ref, atol=2e-4 * float(np.abs(ref).max()), rtol=1e-3)


_VGG_LAYERS = ["PatchConv_0", "Conv_0", "Conv_1", "Conv_2", "Dense_0"]


@pytest.mark.parametrize("normalize", [True, False])
def test_vgg_embedding_scale_with_and_without_normalisation(normalize, key):
  """Multiplying every layer's kernel by c (and layer i's bias by c ** (i + 1)) multiplies
  the plain net's embedding by c ** 5 and leaves the normalised net's unchanged: its scale
  is the layer normalisation's alone."""
  c = 4.0
  net = VGGNet(embedding_dim=16, normalize=normalize)
  images = jax.random.uniform(key, (2, 28, 28, 1))
  params = net.init(jax.random.key(1), images)["params"]
  params = {  # Non-zero biases, so that their scaling is exercised.
    name: {**layer, "bias": layer["bias"] + 0.01} if name in _VGG_LAYERS else layer
    for name, layer in params.items()
  }
  scaled = {
    name: (
      {"kernel": layer["kernel"] * c, "bias": layer["bias"] * c ** (_VGG_LAYERS.index(name) + 1)}
      if name in _VGG_LAYERS
      else layer
    )
    for name, layer in params.items()
  }
  base = net.apply({"params": params}, images)
  factor = 1.0 if normalize else c**5
  out = net.apply({"params": scaled}, images)
  assert float(jnp.abs(base).max()) > 0.0
  np.testing.assert_allclose(
    out, factor * base, rtol=1e-3, atol=1e-4 * factor * float(jnp.abs(base).max())
  )
