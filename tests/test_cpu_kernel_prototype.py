"""The C++ kernel prototype (benchmarks/cpu_kernel_prototype.py) against the library and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subsets_jax as sj
from benchmarks import cpu_kernel_prototype as kernel
from tests import reference

# The kernel is compiled with the machine's C++ compiler; without one it cannot run (the
# reason is printed in the summary, `-ra`).
pytestmark = pytest.mark.skipif(kernel.compiler() is None, reason="no C++ compiler to build it")


def _scores(rng, rows, n):
  scores = reference.hard_rows(rng, rows, n)
  scores[3, :4] = scores[3, 4] + 3.0  # a four-way tie at the top
  return scores


@pytest.mark.parametrize("n,k", [(300, 5), (40, 20), (9, 8)])
@pytest.mark.parametrize("tau", [0.0625, 2.0])
def test_values_and_gradients_as_accurate_as_the_library(n, k, tau, rng):
  """Against the library in float64: errors within 3x the library's own float32 errors."""
  scores = _scores(rng, 5, n)
  w = rng.normal(size=(5, n)).astype(np.float32)

  def value_and_grad(f, dtype):
    s, ww = jnp.asarray(scores, dtype), jnp.asarray(w, dtype)
    return f(s, k, tau), jax.grad(lambda s: jnp.sum(ww * f(s, k, tau)))(s)

  ours = value_and_grad(kernel.soft_topk, jnp.float32)
  lib = value_and_grad(sj.soft_topk, jnp.float32)
  with jax.enable_x64(True):
    exact = [np.asarray(x) for x in value_and_grad(sj.soft_topk, jnp.float64)]
  for o, lb, ex in zip(ours, lib, exact, strict=True):
    scale = float(np.abs(ex).max())
    lib_error = float(np.abs(np.asarray(lb, np.float64) - ex).max())
    ours_error = float(np.abs(np.asarray(o, np.float64) - ex).max())
    assert ours_error <= max(3 * lib_error, 1e-6 * scale), (ours_error, lib_error, scale)
  np.testing.assert_allclose(np.sum(ours[0], axis=-1), k, rtol=1e-5)
  assert float(ours[0][0, 5]) == 0.0 and float(ours[1][0, 5]) == 0.0


def test_matches_float64_reference(rng):
  scores = rng.normal(size=(6, 200)) * 2
  ours = kernel.soft_topk(jnp.asarray(scores, jnp.float32), 9, 1.0)
  np.testing.assert_allclose(ours, reference.soft_topk_numpy(scores, 9, 1.0), atol=2e-6, rtol=0)


def test_jit_and_vmap(rng):
  scores = jnp.asarray(rng.normal(size=(3, 4, 50)).astype(np.float32))
  ours = jax.jit(jax.vmap(lambda s: kernel.soft_topk(s, 5, 1.0)))(scores)
  np.testing.assert_allclose(ours, sj.soft_topk(scores, 5, 1.0), atol=2e-6, rtol=0)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"tau": 0.03}, "tau must be a Python float >= 0.0625"),
    ({"k": 0}, "k must satisfy"),
    ({"scores": jnp.zeros((2, 3, 4))}, "float32 \\[rows, n\\]"),
  ],
)
def test_rejects_what_the_prototype_does_not_cover(kwargs, match):
  args = {"scores": jnp.zeros((2, 4)), "k": 2, "tau": 1.0} | kwargs
  with pytest.raises(ValueError, match=match):
    kernel.soft_topk(args["scores"], args["k"], args["tau"])
