"""Differentiable k-nearest-neighbour loss (Grover et al. 2019; Xie & Ermon 2019, Sec. 5)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import expectation, imle, relaxed_topk, validation


def check_embeddings(query_emb, neighbor_emb, names=("query_emb", "neighbor_emb")):
  """Two real floating `[rows, features]` arrays with the same feature size."""
  arrays = []
  for name, x in zip(names, (query_emb, neighbor_emb), strict=True):
    x = validation.as_array(x, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{name} must be a real floating array; got dtype {x.dtype}.")
    if x.ndim != 2:
      raise ValueError(f"{name} must have shape [rows, features]; got {x.shape}.")
    if validation.is_concrete(x) and x.size:
      # A reduction on the device: a neighbour bank is not copied to the host for it.
      with jax.ensure_compile_time_eval():
        finite = bool(jnp.all(jnp.isfinite(x)))
      if not finite:
        raise ValueError(f"{name} must be finite; it holds NaN or infinity.")
    arrays.append(x)
  if arrays[0].shape[1] != arrays[1].shape[1]:
    raise ValueError(
      f"{names[0]} and {names[1]} must have the same feature size; got "
      f"{arrays[0].shape[1]} and {arrays[1].shape[1]}."
    )
  return arrays


def check_labels(labels, rows: int, name: str) -> jax.Array:
  """Integer class ids of shape `(rows,)`."""
  labels = validation.as_array(labels, name)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array of class ids; got dtype {labels.dtype}.")
  if labels.shape != (rows,):
    raise ValueError(f"{name} must have shape ({rows},); got {labels.shape}.")
  return labels


def sq_distances(q: jax.Array, x: jax.Array, precision) -> jax.Array:
  """`pairwise_sq_distances` of checked arrays (for use under `jit`)."""
  q_sq = jnp.sum(q * q, axis=-1, keepdims=True)
  x_sq = jnp.sum(x * x, axis=-1, keepdims=True).T
  cross = jnp.matmul(q, x.T, precision=precision)
  return jnp.maximum(q_sq + x_sq - 2 * cross, 0)


_sq_distances = jax.jit(sq_distances, static_argnums=2)


def pairwise_sq_distances(
  queries: ArrayLike, neighbors: ArrayLike, *, precision=jax.lax.Precision.HIGHEST
) -> jax.Array:
  r"""Squared Euclidean distances `[B, p] x [N, p] -> [B, N]`, never negative.

  Computed as :math:`|q|^2 + |x|^2 - 2 q \cdot x` (one matrix product, O(B N) memory
  rather than the O(B N p) of broadcasting differences), clipped at 0 because the
  subtraction can cancel to small negative values for near-identical rows.

  Args:
    queries: `[B, p]` real floating array.
    neighbors: `[N, p]` real floating array.
    precision: matmul precision; HIGHEST by default, so that TF32 on GPUs adds no
      cancellation error.

  Returns:
    `[B, N]` squared distances in the promoted dtype of the inputs.

  Raises:
    TypeError: non-floating inputs.
    ValueError: inputs not of rank 2, or of different feature sizes.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> sj.pairwise_sq_distances(jnp.array([[0., 0.]]), jnp.array([[3., 4.], [0., 0.]]))
    Array([[25.,  0.]], dtype=float32)
  """
  q, x = check_embeddings(queries, neighbors, ("queries", "neighbors"))
  return _sq_distances(q, x, precision)


@functools.partial(jax.jit, static_argnames=("k", "num_samples", "estimator", "vjp"))
def _dknn_loss(key, query_emb, neighbor_emb, query_labels, neighbor_labels, tau, lam, **static):
  k, estimator = static["k"], static["estimator"]
  scores = -sq_distances(query_emb, neighbor_emb, jax.lax.Precision.HIGHEST)
  dtype = validation.compute_dtype(scores.dtype)
  same_class = (query_labels[:, None] == neighbor_labels[None, :]).astype(dtype)
  tau = jnp.asarray(tau, dtype)
  if estimator in ("relaxed", "straight_through", "l2x"):
    logits = scores  # tau is the relaxation's temperature
  else:
    logits = scores.astype(dtype) / tau  # tau is the distribution's temperature
  if estimator == "score_function":
    # One value per query: each query's log-likelihood multiplies its own loss.
    f = lambda khot: -jnp.sum(same_class * khot, axis=-1)
  else:
    f = lambda khot: -jnp.mean(jnp.sum(same_class * khot, axis=-1))
  value = expectation.expectation_core(
    f,
    key,
    logits.astype(dtype),
    k,
    estimator=estimator,
    num_samples=static["num_samples"],
    tau=tau,
    family=None,
    lam=jnp.asarray(lam, dtype),
    noise_temperature=jnp.asarray(1, dtype),
    vjp=static["vjp"],
  )
  return jnp.mean(value)


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
  estimator: str = "relaxed",
  lam: ArrayLike = imle.DEFAULT_LAM,
  vjp: str = "recompute",
) -> jax.Array:
  r"""Differentiable kNN loss: minus the top-k mass on same-class neighbours.

  Scores are :math:`s_{bn} = -|q_b - x_n|^2`. For each query `b` and draw `t`, a
  differentiable k-hot :math:`h^t_b` of the scores gives

  .. math::

     \text{loss} = \frac{1}{T B} \sum_{t, b} \Big( -\sum_n 1[y_n = y_b]\, h^t_{bn} \Big),

  as in the reference PyTorch implementation (ermongroup/subsets, `knn/run_dknn.py`),
  averaged over `T = num_samples` independent draws (`keys = jax.random.split(key, T)`,
  computed with `jax.vmap`). The fraction of top-k mass on correct neighbours is
  `-loss / k`. The `estimator` chooses :math:`h`:

  - "relaxed": `gumbel_topk_relaxed(keys[t], s_b, k, tau)` (Xie & Ermon);
  - "straight_through": `gumbel_topk_relaxed(..., hard=True)`, the exact Gumbel-top-k
    k-hot forward with the relaxed gradient;
  - "simple": `simple_topk(keys[t], s_b / tau, k)`, an exact exactly-k sample forward
    with the gradient of its exact marginals (Ahmed et al.);
  - "imle": `imle_topk(keys[t], s_b / tau, k, lam=lam)` (Niepert et al.);
  - "score_function": exact Gumbel-top-k samples of `s_b / tau`, the score-function
    gradient with a leave-one-out baseline over the `num_samples >= 2` draws, each
    query's log-likelihood weighting its own loss;
  - "l2x": `l2x_relaxed(keys[t], s_b, k, tau)` (Chen et al.).

  All are the estimators of `expectation`, with `f` the loss of a k-hot. The loss is
  linear in :math:`h`, so "relaxed" and "straight_through" give bitwise the same
  gradient (they differ in the loss value only): training with either is the same run.

  Args:
    key: a PRNG key.
    query_emb: `[B, p]` query embeddings.
    neighbor_emb: `[N, p]` candidate neighbour embeddings, `N >= k`.
    query_labels: integer `[B]` class ids.
    neighbor_labels: integer `[N]` class ids.
    k: neighbours per query, a Python int (static).
    tau: temperature > 0, a real scalar; may be traced.
    num_samples: draws averaged per query, a Python int >= 1 (>= 2 for
      "score_function") (static).
    estimator: one of `ESTIMATORS` (static).
    lam: I-MLE's :math:`\lambda`, a real scalar > 0 (as `imle_topk`); may be traced.
    vjp: gradient mode of the relaxation, as in `soft_topk` (static).

  Returns:
    Scalar loss in `[-k, 0]`, in the embeddings' compute dtype; NaN when a traced
    embedding holds NaN or infinity.

  Raises:
    TypeError: non-floating embeddings, non-integer labels, non-int `k`, non-real `tau`,
      or a `key` that is not a PRNG key.
    ValueError: mismatched shapes, `k` outside `[1, N]`, `num_samples < 1` (< 2 for
      "score_function"), unknown `estimator` or `vjp`, concrete `tau` or `lam` not
      finite and > 0, or concrete embeddings that are not finite.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> q, x = jnp.zeros((2, 3)), jnp.ones((5, 3))
    >>> loss = sj.dknn_loss(jax.random.key(0), q, x, jnp.array([0, 1]),
    ...                     jnp.zeros(5, jnp.int32), k=2, tau=1.0)
    >>> round(float(loss), 4)  # query 0 has only same-class neighbours, query 1 none
    -1.0

  References:
    Grover, Wang, Zweig & Ermon, "Stochastic Optimization of Sorting Networks via
    Continuous Relaxations", ICLR 2019; Xie & Ermon, IJCAI 2019, Section 5; Ahmed, Zeng,
    Niepert & Van den Broeck, "SIMPLE: A Gradient Estimator for k-Subset Sampling",
    ICLR 2023.
  """
  query_emb, neighbor_emb = check_embeddings(query_emb, neighbor_emb)
  num_queries, num_neighbors = query_emb.shape[0], neighbor_emb.shape[0]
  query_labels = check_labels(query_labels, num_queries, "query_labels")
  neighbor_labels = check_labels(neighbor_labels, num_neighbors, "neighbor_labels")
  k = validation.check_k(k, num_neighbors)
  tau = validation.check_tau(tau)
  num_samples = validation.check_positive_int(num_samples, "num_samples")
  expectation.check_estimator(estimator, None, num_samples)
  lam = validation.check_tau(lam, name="lam")
  relaxed_topk.check_vjp(vjp)
  key = validation.check_key(key)
  return _dknn_loss(
    key,
    query_emb,
    neighbor_emb,
    query_labels,
    neighbor_labels,
    tau,
    lam,
    k=k,
    num_samples=num_samples,
    estimator=estimator,
    vjp=vjp,
  )
