"""NaN in, NaN out: a traced row with NaN or +inf gives NaN outputs; concrete ones are errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subsets_jax as sj

_KEY = jax.random.key(0)
_IDX = jnp.array([[0, 2], [1, 3]])

# name -> a function of `[2, 5]` scores returning per-row outputs `[2, ...]`.
FUNCTIONS = {
  "soft_topk": lambda s: sj.soft_topk(s, 2, 0.5),
  "soft_topk_autodiff": lambda s: sj.soft_topk(s, 2, 0.5, vjp="autodiff"),
  "gumbel_topk_relaxed": lambda s: sj.gumbel_topk_relaxed(_KEY, s, 2, 0.5),
  "gumbel_topk_relaxed_hard": lambda s: sj.gumbel_topk_relaxed(_KEY, s, 2, 0.5, hard=True),
  "subset_log_prob": lambda s: sj.subset_log_prob(s, _IDX),
  "unordered_subset_log_prob": lambda s: sj.unordered_subset_log_prob(s, _IDX),
  "inclusion_probs": lambda s: sj.inclusion_probs(s, 2),
  "exactly_k_log_partition": lambda s: sj.exactly_k_log_partition(s, 2),
  "exactly_k_marginals": lambda s: sj.exactly_k_marginals(s, 2),
  "exactly_k_log_prob": lambda s: sj.exactly_k_log_prob(s, _IDX),
  "simple_topk": lambda s: sj.simple_topk(_KEY, s, 2),
  "exactly_k_entropy": lambda s: sj.exactly_k_entropy(s, 2),
  "imle_topk": lambda s: sj.imle_topk(_KEY, s, 2),
  "l2x_relaxed": lambda s: sj.l2x_relaxed(_KEY, s, 2),
}
# Every estimator of `expectation`, with a per-row `f`.
for _estimator in sj.ESTIMATORS:
  FUNCTIONS[f"expectation_{_estimator}"] = lambda s, e=_estimator: sj.expectation(
    lambda z: jnp.sum(z * jnp.broadcast_to(jnp.arange(5.0), z.shape), axis=-1),
    _KEY,
    s,
    2,
    estimator=e,
    num_samples=2 if e == "score_function" else 1,
  )
_VALID = jnp.array([0.3, -1.0, 2.0, 0.5, -jnp.inf])


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_traced_bad_row_is_nan_and_the_others_are_unchanged(name, bad):
  fn = FUNCTIONS[name]
  scores = jnp.stack([_VALID, _VALID.at[1].set(bad)])
  out = np.asarray(jax.jit(fn)(scores))
  assert np.all(np.isnan(out[1])), out[1]
  expected = np.asarray(jax.jit(fn)(jnp.stack([_VALID, _VALID])))[0]
  np.testing.assert_array_equal(out[0], expected)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_gumbel_topk_and_straight_through_pick_the_same_items_on_a_bad_row(bad):
  scores = jnp.stack([_VALID, _VALID.at[1].set(bad)])
  idx = jax.jit(lambda s: sj.gumbel_topk(_KEY, s, 2))(scores)
  hard = jax.jit(lambda s: sj.gumbel_topk_relaxed(_KEY, s, 2, 0.5, hard=True))(scores)
  # The straight-through value of the bad row is NaN; its encoded items are top_k's.
  np.testing.assert_array_equal(hard[0], sj.khot(idx[0], 5))  # the valid row: exactly the sample
  assert idx.shape == (2, 2)


def test_dknn_loss_of_traced_nan_embeddings_is_nan(key):
  q = jnp.ones((4, 3)).at[2, 1].set(jnp.nan)
  x = jnp.linspace(0, 1, 18).reshape(6, 3)
  ql, xl = jnp.array([0, 1, 0, 1]), jnp.array([0, 1, 1, 0, 1, 0])
  for estimator in sj.ESTIMATORS:
    loss = jax.jit(
      lambda q, e=estimator: sj.dknn_loss(
        key, q, x, ql, xl, k=2, tau=1.0, estimator=e, num_samples=2
      )
    )(q)
    assert np.isnan(float(loss)), estimator


def test_concrete_bad_input_is_an_error(key):
  x = jnp.ones((6, 3))
  with pytest.raises(ValueError, match="query_emb must be finite"):
    sj.dknn_loss(
      key, x.at[0, 0].set(jnp.nan), x, jnp.zeros(6, int), jnp.zeros(6, int), k=2, tau=1.0
    )
  with pytest.raises(ValueError, match="tau must be finite and > 0"):
    sj.dknn_loss(key, x, x, jnp.zeros(6, int), jnp.zeros(6, int), k=2, tau=0.0)
  with pytest.raises(ValueError, match="neighbor_labels must lie in"):
    sj.knn_predict(x, x, jnp.array([0, 1, 2, 3, 0, 1]), k=2, num_classes=3)
  with pytest.raises(ValueError, match="NaN"):
    sj.soft_topk(jnp.array([0.0, jnp.nan, 1.0]), 1)


def test_knn_predict_of_no_queries_is_empty():
  out = sj.knn_predict(jnp.zeros((0, 3)), jnp.ones((5, 3)), jnp.zeros(5, int), k=2, num_classes=2)
  assert out.shape == (0,) and out.dtype == jnp.int32


def test_valid_input_with_excluded_items_passes_debug_nans():
  scores = jnp.stack([_VALID, _VALID[::-1]])
  with jax.debug_nans(True):
    for name, fn in FUNCTIONS.items():
      jax.block_until_ready(fn(scores))
      if name in ("soft_topk", "gumbel_topk_relaxed", "exactly_k_marginals"):
        jax.block_until_ready(jax.grad(lambda s, fn=fn: jnp.sum(fn(s)[:, 0]))(scores))
