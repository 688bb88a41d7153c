"""Differentiable k-nearest-neighbour loss (Grover et al. 2019; Xie & Ermon 2019, Sec. 5)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import relaxed_topk, validation


def _check_embeddings(query_emb, neighbor_emb):
  for name, x in (("query_emb", query_emb), ("neighbor_emb", neighbor_emb)):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise TypeError(f"{name} must be a real floating array; got dtype {jnp.result_type(x)}.")
    if jnp.ndim(x) != 2:
      raise ValueError(f"{name} must have shape [rows, features]; got {jnp.shape(x)}.")
  if jnp.shape(query_emb)[1] != jnp.shape(neighbor_emb)[1]:
    raise ValueError(
      "query_emb and neighbor_emb must have the same feature size; got "
      f"{jnp.shape(query_emb)[1]} and {jnp.shape(neighbor_emb)[1]}."
    )


def _check_labels(labels, rows: int, name: str):
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise TypeError(f"{name} must be an integer array of class ids; got {jnp.result_type(labels)}.")
  if jnp.shape(labels) != (rows,):
    raise ValueError(f"{name} must have shape ({rows},); got {jnp.shape(labels)}.")


def pairwise_sq_distances(
  queries: ArrayLike, neighbors: ArrayLike, *, precision=jax.lax.Precision.HIGHEST
) -> jax.Array:
  """Squared Euclidean distances `[B, p] x [N, p] -> [B, N]`, never negative.

  Computed as `|q|^2 + |x|^2 - 2 q.x` (one matrix product, O(B N) memory rather
  than the O(B N p) of broadcasting differences), clipped at 0 because the
  subtraction can cancel to small negative values for near-identical rows.

  Args:
    queries: `[B, p]` float array.
    neighbors: `[N, p]` float array.
    precision: matmul precision; HIGHEST by default so that GPU TF32 does not
      add cancellation error.

  Example:
    >>> import jax.numpy as jnp
    >>> pairwise_sq_distances(jnp.array([[0., 0.]]), jnp.array([[3., 4.], [0., 0.]]))
    Array([[25.,  0.]], dtype=float32)
  """
  _check_embeddings(queries, neighbors)
  q = jnp.asarray(queries)
  x = jnp.asarray(neighbors)
  q_sq = jnp.sum(q * q, axis=-1, keepdims=True)
  x_sq = jnp.sum(x * x, axis=-1, keepdims=True).T
  cross = jnp.matmul(q, x.T, precision=precision)
  return jnp.maximum(q_sq + x_sq - 2 * cross, 0)


@functools.partial(jax.jit, static_argnames=("k", "num_samples", "hard", "implementation"))
def dknn_loss(
  key: ArrayLike,
  query_emb: ArrayLike,
  neighbor_emb: ArrayLike,
  query_labels: ArrayLike,
  neighbor_labels: ArrayLike,
  *,
  k: int,
  tau: ArrayLike,
  num_samples: int = 1,
  hard: bool = False,
  implementation: str = "xla",
) -> jax.Array:
  """Differentiable kNN loss: minus the relaxed top-k mass on same-class neighbours.

  Scores are `-|q_b - x_n|^2`. For each query `b` and Gumbel draw `s`, the
  relaxed k-hot `h^s_b = gumbel_topk_relaxed(keys[s], scores_b, k, tau, hard)`
  with `keys = jax.random.split(key, num_samples)` gives

      loss = mean_{s, b} ( - sum_n 1[y_n = y_b] h^s_{b n} ),

  as in the reference `run_dknn.py` of Xie & Ermon (2019), averaged over
  `num_samples` independent draws computed with `jax.vmap` over the keys.
  The fraction of relaxed top-k mass on correct neighbours is `-loss / k`.

  Args:
    key: PRNG key.
    query_emb: `[B, p]` query embeddings.
    neighbor_emb: `[N, p]` candidate neighbour embeddings, `N >= k`.
    query_labels: int `[B]` class ids.
    neighbor_labels: int `[N]` class ids.
    k: neighbours per query (static).
    tau: temperature > 0 (may be traced).
    num_samples: Gumbel draws averaged per query (static).
    hard: straight-through exact k-hot forward.
    implementation: "xla" or "cpu_kernel", as in `soft_topk` (static).

  Returns:
    Scalar loss in `[-k, 0]`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> q, x = jnp.zeros((2, 3)), jnp.ones((5, 3))
    >>> loss = dknn_loss(jax.random.key(0), q, x, jnp.array([0, 1]), jnp.zeros(5, jnp.int32),
    ...                  k=2, tau=1.0)
    >>> round(float(loss), 4)  # query 0 has only same-class neighbours, query 1 none
    -1.0
  """
  _check_embeddings(query_emb, neighbor_emb)
  num_queries, num_neighbors = jnp.shape(query_emb)[0], jnp.shape(neighbor_emb)[0]
  _check_labels(query_labels, num_queries, "query_labels")
  _check_labels(neighbor_labels, num_neighbors, "neighbor_labels")
  validation.check_k(k, num_neighbors)
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be a Python int >= 1; got {num_samples!r}.")
  scores = -pairwise_sq_distances(query_emb, neighbor_emb)
  same_class = (query_labels[:, None] == neighbor_labels[None, :]).astype(scores.dtype)

  def one_draw(draw_key):
    khot = relaxed_topk.gumbel_topk_relaxed(
      draw_key, scores, k, tau, hard=hard, implementation=implementation
    )
    return -jnp.mean(jnp.sum(same_class * khot, axis=-1))

  return jnp.mean(jax.vmap(one_draw)(jax.random.split(key, num_samples)))
