"""Every bad argument gets an early TypeError / ValueError that names it; lists and NumPy work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subsets_jax as sj

_KEY = jax.random.key(0)
_SCORES = jnp.array([0.3, -1.0, 2.0, 0.5, 1.5])
_Q, _N = jnp.ones((3, 4)), jnp.ones((6, 4))
_QL, _NL = jnp.array([0, 1, 0]), jnp.array([0, 1, 0, 1, 0, 1])
_KEY_MESSAGE = "key must be a PRNG key"

# Every function that takes a key, called with `key` and otherwise valid arguments.
_WITH_KEY = {
  "gumbel_noise": lambda key: sj.gumbel_noise(key, _SCORES),
  "gumbel_topk": lambda key: sj.gumbel_topk(key, _SCORES, 2),
  "gumbel_topk_relaxed": lambda key: sj.gumbel_topk_relaxed(key, _SCORES, 2),
  "exactly_k_sample": lambda key: sj.exactly_k_sample(key, _SCORES, 2),
  "simple_topk": lambda key: sj.simple_topk(key, _SCORES, 2),
  "dknn_loss": lambda key: sj.dknn_loss(key, _Q, _N, _QL, _NL, k=2, tau=1.0),
  "imle_topk": lambda key: sj.imle_topk(key, _SCORES, 2),
  "sum_of_gamma_noise": lambda key: sj.sum_of_gamma_noise(key, _SCORES, 2),
  "l2x_relaxed": lambda key: sj.l2x_relaxed(key, _SCORES, 2),
  "expectation": lambda key: sj.expectation(jnp.sum, key, _SCORES, 2, estimator="simple"),
}
_BAD_KEYS = {
  "None": None,
  "int": 3,
  "int array": jnp.array([1, 2]),
  "float array": jnp.zeros(2),
  "uint32 of the wrong shape": jnp.zeros(3, jnp.uint32),
  "string": "0",
}


@pytest.mark.parametrize("bad", sorted(_BAD_KEYS))
@pytest.mark.parametrize("name", sorted(_WITH_KEY))
def test_bad_keys(name, bad):
  with pytest.raises(TypeError, match=_KEY_MESSAGE):
    _WITH_KEY[name](_BAD_KEYS[bad])


# (case, call, error, message): the list and its neighbours.
_CASES = [
  ("tau None", lambda: sj.soft_topk(_SCORES, 2, None), TypeError, "tau must be a real scalar"),
  (
    "tau string",
    lambda: sj.gumbel_topk_relaxed(_KEY, _SCORES, 2, "0.5"),
    TypeError,
    "tau must be a real scalar",
  ),
  (
    "dknn_loss tau 0",
    lambda: sj.dknn_loss(_KEY, _Q, _N, _QL, _NL, k=2, tau=0.0),
    ValueError,
    "tau must be finite and > 0",
  ),
  (
    "dknn_loss NaN query embeddings",
    lambda: sj.dknn_loss(_KEY, _Q.at[0, 0].set(jnp.nan), _N, _QL, _NL, k=2, tau=1.0),
    ValueError,
    "query_emb must be finite",
  ),
  (
    "dknn_loss inf neighbour embeddings",
    lambda: sj.dknn_loss(_KEY, _Q, _N.at[1, 2].set(jnp.inf), _QL, _NL, k=2, tau=1.0),
    ValueError,
    "neighbor_emb must be finite",
  ),
  (
    "dknn_loss k above the neighbours",
    lambda: sj.dknn_loss(_KEY, _Q, _N, _QL, _NL, k=7, tau=1.0),
    ValueError,
    "1 <= k <= n = 6",
  ),
  (
    "dknn_loss float labels",
    lambda: sj.dknn_loss(_KEY, _Q, _N, _QL * 1.0, _NL, k=2, tau=1.0),
    TypeError,
    "query_labels must be an integer array",
  ),
  (
    "dknn_loss labels of the wrong length",
    lambda: sj.dknn_loss(_KEY, _Q, _N, _QL, _NL[:5], k=2, tau=1.0),
    ValueError,
    r"neighbor_labels must have shape \(6,\)",
  ),
  (
    "dknn_loss unknown estimator",
    lambda: sj.dknn_loss(_KEY, _Q, _N, _QL, _NL, k=2, tau=1.0, estimator="gumbel"),
    ValueError,
    "estimator must be one of",
  ),
  (
    "dknn_loss num_samples 0",
    lambda: sj.dknn_loss(_KEY, _Q, _N, _QL, _NL, k=2, tau=1.0, num_samples=0),
    ValueError,
    "num_samples must be a Python int >= 1",
  ),
  (
    "knn_predict labels outside [0, num_classes)",
    lambda: sj.knn_predict(_Q, _N, _NL + 1, k=2, num_classes=2),
    ValueError,
    r"neighbor_labels must lie in \[0, n\) = \[0, 2\)",
  ),
  (
    "knn_predict negative labels",
    lambda: sj.knn_predict(_Q, _N, _NL - 1, k=2, num_classes=2),
    ValueError,
    "neighbor_labels must lie in",
  ),
  (
    "knn_predict mesh without a data axis",
    lambda: sj.knn_predict(_Q, _N, _NL, k=2, num_classes=2, mesh=jax.make_mesh((1,), ("x",))),
    ValueError,
    "mesh must have an axis named 'data'",
  ),
  (
    "list of strings as scores",
    lambda: sj.soft_topk(["a", "b"], 1),
    TypeError,
    "scores must be a numeric array",
  ),
  (
    "ragged list as scores",
    lambda: sj.soft_topk([[0.0, 1.0], [2.0]], 1),
    TypeError,
    "scores must be an array",
  ),
  ("None as scores", lambda: sj.inclusion_probs(None, 1), TypeError, "scores must be an array"),
  (
    "list of strings as indices",
    lambda: sj.subset_log_prob(_SCORES, ["0", "1"]),
    TypeError,
    "indices must be a numeric array",
  ),
  (
    "a bool k",
    lambda: sj.exactly_k_marginals(_SCORES, True),
    TypeError,
    "k must be a Python int",
  ),
  (
    "a float k",
    lambda: sj.inclusion_probs(_SCORES, 2.0),
    TypeError,
    "k must be a Python int",
  ),
  (
    "embeddings of different widths",
    lambda: sj.pairwise_sq_distances(jnp.zeros((3, 4)), jnp.zeros((3, 5))),
    ValueError,
    "queries and neighbors must have the same feature size",
  ),
]


@pytest.mark.parametrize(("case", "call", "error", "match"), _CASES, ids=[c[0] for c in _CASES])
def test_bad_argument_is_named(case, call, error, match):
  with pytest.raises(error, match=match):
    call()


_ARRAY_LIKE = {
  "soft_topk": lambda s: sj.soft_topk(s, 2, 0.5),
  "gumbel_topk": lambda s: sj.gumbel_topk(_KEY, s, 2),
  "gumbel_topk_relaxed": lambda s: sj.gumbel_topk_relaxed(_KEY, s, 2, 0.5),
  "inclusion_probs": lambda s: sj.inclusion_probs(s, 2),
  "exactly_k_marginals": lambda s: sj.exactly_k_marginals(s, 2),
  "exactly_k_sample": lambda s: sj.exactly_k_sample(_KEY, s, 2),
  "simple_topk": lambda s: sj.simple_topk(_KEY, s, 2),
}


@pytest.mark.parametrize("form", ["list", "numpy"])
@pytest.mark.parametrize("name", sorted(_ARRAY_LIKE))
def test_lists_and_numpy_arrays_are_accepted(name, form):
  scores = [0.3, -1.0, 2.0, 0.5, 1.5]
  given = scores if form == "list" else np.asarray(scores, np.float32)
  expected = _ARRAY_LIKE[name](jnp.asarray(scores, jnp.float32))
  np.testing.assert_array_equal(_ARRAY_LIKE[name](given), expected)


def test_knn_predict_of_no_queries_is_empty():
  out = sj.knn_predict(jnp.zeros((0, 4)), _N, _NL, k=2, num_classes=2)
  assert out.shape == (0,) and out.dtype == jnp.int32
