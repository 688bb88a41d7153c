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


def _loss_from_public_pieces(key, q, x, qy, xy, *, k, tau, num_samples, estimator, lam):
  """The dKNN loss written with `pairwise_sq_distances` and `expectation` (the public API)."""
  scores = -sj.pairwise_sq_distances(q, x)
  same = (qy[:, None] == xy[None, :]).astype(jnp.float32)
  if estimator not in ("relaxed", "straight_through", "l2x"):
    scores = scores / tau  # the distribution's temperature
  if estimator == "score_function":
    f = lambda z: -jnp.sum(same * z, axis=-1)
  else:
    f = lambda z: -jnp.mean(jnp.sum(same * z, axis=-1))
  value = sj.expectation(
    f, key, scores, k, estimator=estimator, num_samples=num_samples, tau=tau, lam=lam
  )
  return jnp.mean(value)


@pytest.mark.parametrize("estimator", sj.ESTIMATORS)
def test_every_estimator_is_the_expectation_of_the_loss(estimator, key):
  q, x, qy, xy = _embeddings(key)
  # lam is large enough that the upstream gradient (about 1 / (6 * 3) per entry) moves the
  # I-MLE target's top k.
  kw = dict(k=3, tau=0.5, num_samples=3, estimator=estimator, lam=100.0)
  ours = jax.value_and_grad(lambda q: sj.dknn_loss(key, q, x, qy, xy, **kw))(q)
  pieces = jax.value_and_grad(lambda q: _loss_from_public_pieces(key, q, x, qy, xy, **kw))(q)
  np.testing.assert_allclose(ours[0], pieces[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[1], pieces[1], rtol=1e-4, atol=1e-5)
  assert bool(jnp.any(ours[1] != 0))


def test_which_estimators_give_the_same_gradient(key):
  """The loss is linear in the k-hot: relaxed and straight-through share their gradient
  bit for bit; every other estimator gives a different one."""
  q, x, qy, xy = _embeddings(key)
  grads = {
    e: jax.grad(
      lambda q, e=e: sj.dknn_loss(key, q, x, qy, xy, k=3, tau=0.5, num_samples=2, estimator=e)
    )(q)
    for e in sj.ESTIMATORS
  }
  np.testing.assert_array_equal(grads["relaxed"], grads["straight_through"])
  others = [e for e in sj.ESTIMATORS if e not in ("relaxed", "straight_through")]
  for i, a in enumerate(["relaxed", *others]):
    for b in others[i:]:
      if a != b:
        assert not np.allclose(grads[a], grads[b]), (a, b)


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    (dict(estimator="score_function"), ValueError, "num_samples >= 2"),
    (dict(estimator="imle", lam=0.0), ValueError, "lam must be finite and > 0"),
    (dict(estimator="gumbel"), ValueError, "estimator must be one of"),
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
