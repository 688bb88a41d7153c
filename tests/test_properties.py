"""Property-based tests (Hypothesis) over shapes, batch axes, dtypes, scales, tau, -inf masks, k.

For every draw: relaxed and exact outputs are finite, in [0, 1], sum to k and put nothing on
an excluded (-inf) item; gradients are finite; samplers never pick an excluded item. The
example counts come from the Hypothesis profile (`conftest.py`): a small one in the test
suite, `HYPOTHESIS_PROFILE=thorough` for many more.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import subsets_jax as sj

DTYPES = ["bfloat16", "float16", "float32", "float64"]


@st.composite
def problems(draw):
  """(scores, k, tau, excluded mask): few distinct shapes, so few compilations."""
  dtype = draw(st.sampled_from(DTYPES))
  batch = draw(st.sampled_from([(), (2, 3)]))
  n = draw(st.sampled_from([1, 5, 33]))
  seed = draw(st.integers(0, 2**31 - 1))
  scale = 10 ** draw(st.floats(-2, 4))
  tau = 10 ** draw(st.floats(-3, 2))
  rng = np.random.default_rng(seed)
  values = rng.normal(size=(*batch, n)) * scale
  excluded = rng.random((*batch, n)) < draw(st.sampled_from([0.0, 0.3]))
  excluded[..., 0] = False  # every row keeps at least one item
  num_finite = int((~excluded).sum(-1).min())
  k = draw(st.integers(1, num_finite))
  values = np.where(excluded, -np.inf, values)
  return values, dtype, k, tau, excluded


@contextlib.contextmanager
def dtype_context(dtype):
  with jax.enable_x64(dtype == "float64"):
    yield jnp.dtype(dtype)


def _check_khot_like(out, k, excluded, dtype, *, probabilities=True):
  """Finite, >= 0, sums to k, 0 on excluded items; <= 1 for probabilities.

  The relaxation's entries are not probabilities: sum_j p^j can exceed 1 for an item far
  ahead of the others at a moderate tau (its mass is only partly removed after step 1).
  """
  out = np.asarray(out, np.float64)
  assert np.all(np.isfinite(out))
  eps = float(jnp.finfo(dtype).eps)
  assert np.all(out >= 0) and np.all(out <= (1 if probabilities else k) + 4 * eps)
  assert np.all(out[excluded] == 0)
  np.testing.assert_allclose(out.sum(-1), k, atol=k * (8 * eps + 1e-4))


def _check_finite_grad(fn, scores):
  weights = jnp.broadcast_to(jnp.arange(scores.shape[-1], dtype=jnp.float32), scores.shape)
  grad = jax.grad(lambda s: jnp.sum(fn(s).astype(jnp.float32) * weights))(scores)
  assert np.all(np.isfinite(np.asarray(grad, np.float64)))


@given(problems(), st.booleans())
def test_relaxed_topk(problem, hard):
  values, dtype, k, tau, excluded = problem
  with dtype_context(dtype) as dt:
    scores = jnp.asarray(values, dt)
    relaxed = lambda s: sj.gumbel_topk_relaxed(jax.random.key(1), s, k, tau, hard=hard)
    out = relaxed(scores)
    assert out.dtype == dt and out.shape == scores.shape
    _check_khot_like(out, k, excluded, dt, probabilities=hard)
    if hard:  # exactly k ones
      assert set(np.unique(np.asarray(out, np.float64))) <= {0.0, 1.0}
    _check_finite_grad(relaxed, scores)
    _check_khot_like(sj.soft_topk(scores, k, tau), k, excluded, dt, probabilities=False)


@pytest.mark.slow
@given(problems())
def test_samplers_never_pick_an_excluded_item(problem):
  values, dtype, k, _, excluded = problem
  with dtype_context(dtype) as dt:
    scores = jnp.asarray(values, dt)
    for name, sample in {
      "gumbel_topk": sj.gumbel_topk,
      "exactly_k_sample": sj.exactly_k_sample,
    }.items():
      indices = np.asarray(sample(jax.random.key(2), scores, k))
      assert indices.shape == (*scores.shape[:-1], k), name
      picked = np.take_along_axis(excluded, indices, axis=-1)
      assert not picked.any(), name
      assert all(len(set(row)) == k for row in indices.reshape(-1, k)), name
    simple = lambda s: sj.simple_topk(jax.random.key(3), s, k)
    out = simple(scores)
    _check_khot_like(out, k, excluded, dt)
    _check_finite_grad(simple, scores)


@pytest.mark.slow
@given(problems())
def test_exact_marginals(problem):
  values, dtype, k, _, excluded = problem
  with dtype_context(dtype) as dt:
    scores = jnp.asarray(values, dt)
    for fn in (
      lambda s: sj.exactly_k_marginals(s, k),
      lambda s: sj.inclusion_probs(s, k),
    ):
      _check_khot_like(fn(scores), k, excluded, dt)
    _check_finite_grad(lambda s: sj.exactly_k_marginals(s, k), scores)
    assert np.all(np.isfinite(np.asarray(sj.exactly_k_log_partition(scores, k), np.float64)))
