"""dknn_loss and pairwise_sq_distances."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subsets_jax as sj


def test_distances_match_brute_force_and_are_nonnegative(rng):
  q = rng.normal(size=(7, 5)).astype(np.float32)
  x = np.concatenate([rng.normal(size=(9, 5)), q[:3] + 1e-7]).astype(np.float32) * 100
  q = q * 100
  ours = np.asarray(sj.pairwise_sq_distances(q, x))
  brute = ((q[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
  assert (ours >= 0).all()
  np.testing.assert_allclose(ours, brute, atol=1e-2 * np.abs(brute).max() * 1e-4 + 1e-2)


def _embeddings(key, b=6, n=20, p=4):
  kq, kx, ky, kz = jax.random.split(key, 4)
  return (
    jax.random.normal(kq, (b, p)),
    jax.random.normal(kx, (n, p)),
    jax.random.randint(ky, (b,), 0, 3),
    jax.random.randint(kz, (n,), 0, 3),
  )


@pytest.mark.parametrize("num_samples", [1, 4])
@pytest.mark.parametrize("estimator", ["relaxed", "straight_through"])
def test_loss_is_mean_of_single_draws_with_split_keys(num_samples, estimator, key):
  q, x, qy, xy = _embeddings(key)
  loss = sj.dknn_loss(key, q, x, qy, xy, k=3, tau=0.5, num_samples=num_samples, estimator=estimator)
  hard = estimator == "straight_through"
  # Independent computation: one relaxed top-k per split key, loss as in the reference.
  d = ((np.asarray(q)[:, None] - np.asarray(x)[None]) ** 2).sum(-1)
  same = np.asarray(qy)[:, None] == np.asarray(xy)[None]
  singles = []
  for draw_key in jax.random.split(key, num_samples):
    khot = np.asarray(sj.gumbel_topk_relaxed(draw_key, jnp.asarray(-d), 3, 0.5, hard=hard))
    singles.append(-(same * khot).sum(-1).mean())
  np.testing.assert_allclose(float(loss), np.mean(singles), rtol=1e-4, atol=1e-5)
  assert -3 <= float(loss) <= 0


def test_gradient_finite_and_no_retrace_across_steps(key):
  q, x, qy, xy = _embeddings(key)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(q, x, step_key, tau):
    return jax.value_and_grad(sj.dknn_loss, argnums=(1, 2))(
      step_key, q, x, qy, xy, k=4, tau=tau, num_samples=3
    )

  for i in range(4):
    loss, (gq, gx) = step(q, x, jax.random.fold_in(key, i), jnp.float32(1.0 / (i + 1)))
    assert bool(jnp.isfinite(loss))
    assert bool(jnp.all(jnp.isfinite(gq))) and bool(jnp.all(jnp.isfinite(gx)))
    q, x = q - 0.1 * gq, x - 0.1 * gx


def test_descending_the_loss_gathers_same_class_neighbours(key):
  q, x, qy, xy = _embeddings(key, b=8, n=30)
  loss_fn = lambda x: sj.dknn_loss(key, q, x, qy, xy, k=3, tau=1.0, num_samples=2)
  before = float(loss_fn(x))
  for _ in range(50):
    x = x - 0.2 * jax.grad(loss_fn)(x)
  assert float(loss_fn(x)) < before - 0.5


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    (dict(k=0), ValueError, "1 <= k"),
    (dict(k=21), ValueError, "1 <= k"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(query_labels=jnp.zeros(6)), TypeError, "query_labels"),
    (dict(neighbor_labels=jnp.zeros(19, jnp.int32)), ValueError, "neighbor_labels"),
    (dict(query_emb=jnp.zeros((6, 3))), ValueError, "feature size"),
    (dict(neighbor_emb=jnp.zeros(20)), ValueError, "neighbor_emb"),
  ],
)
def test_bad_input(kwargs, error, match, key):
  q, x, qy, xy = _embeddings(key)
  args = dict(query_emb=q, neighbor_emb=x, query_labels=qy, neighbor_labels=xy, k=3, tau=1.0)
  with pytest.raises(error, match=match):
    sj.dknn_loss(key, **(args | kwargs))
