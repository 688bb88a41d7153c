"""Exact k-nearest-neighbour classification by majority vote, chunked over queries."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from subsets_jax._src import dknn, validation

# The mesh axis that `knn_predict` splits the neighbour bank over.
DATA_AXIS = "data"


def _vote(neighbor_classes: jax.Array, num_classes: int) -> jax.Array:
  """Majority class of each row of `[Q, k]` labels listed nearest first; ties -> nearest."""
  k = neighbor_classes.shape[-1]
  one_hot = jax.nn.one_hot(neighbor_classes, num_classes, dtype=jnp.int32)  # [Q, k, C]
  counts = jnp.sum(one_hot, axis=1)
  rank = jnp.arange(k, dtype=jnp.int32)[None, :, None]
  # Position of each class's nearest member (k when absent): smaller is better among ties.
  first = jnp.min(jnp.where(one_hot > 0, rank, k), axis=1)
  return jnp.argmax(counts * (k + 1) - first, axis=-1).astype(jnp.int32)


def knn_predict(
  query_emb: ArrayLike,
  neighbor_emb: ArrayLike,
  neighbor_labels: ArrayLike,
  *,
  k: int,
  num_classes: int,
  chunk_size: int = 512,
  mesh: Mesh | None = None,
) -> jax.Array:
  """Classifies queries by majority vote among their `k` nearest neighbours.

  Exact Euclidean kNN: `lax.top_k` of minus the squared distances, computed
  `chunk_size` queries at a time (`lax.map`), so memory is
  O(chunk_size x N) whatever the number of queries.

  Tie rules (deterministic): among neighbours at equal distance, the lower
  neighbour index counts as nearer (the order of `lax.top_k`); among classes
  with equal vote counts, the class whose member is nearest wins.

  With a `mesh`, the neighbour bank is split across the mesh's "data" axis
  (`shard_map`): each device finds the k nearest of its shard, the D x k
  candidates are all-gathered in device order and merged by a second `top_k`,
  which is exact and keeps the tie rules (a bank far larger than one device's
  memory works; queries are replicated).

  Args:
    query_emb: `[Q, p]`.
    neighbor_emb: `[N, p]`, `N >= k`.
    neighbor_labels: int `[N]` in `[0, num_classes)`.
    k: neighbours per vote (static).
    num_classes: number of classes (static).
    chunk_size: queries per chunk (static).
    mesh: optional device mesh with an axis named "data" to shard the bank over, with
      Explicit or Auto axis types (as `jax.make_mesh` makes); the inputs may be
      placed on it already or not.

  Returns:
    int32 `[Q]` predicted classes (empty for `Q = 0`).

  Raises:
    TypeError: non-floating embeddings, non-integer labels, or a non-int `k`.
    ValueError: shapes that do not match, `k` outside `[1, N]`, `num_classes` or
      `chunk_size` not a Python int >= 1, concrete labels outside `[0, num_classes)`,
      non-finite concrete embeddings, or a `mesh` without a "data" axis.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> bank = jnp.array([[0.], [1.], [10.], [11.], [12.]])
    >>> sj.knn_predict(jnp.array([[0.5], [10.5]]), bank, jnp.array([0, 0, 1, 1, 1]),
    ...             k=3, num_classes=2)
    Array([0, 1], dtype=int32)
  """
  queries, bank = dknn.check_embeddings(query_emb, neighbor_emb)
  labels = dknn.check_labels(neighbor_labels, bank.shape[0], "neighbor_labels")
  k = validation.check_k(k, bank.shape[0])
  num_classes = validation.check_positive_int(num_classes, "num_classes")
  chunk_size = validation.check_positive_int(chunk_size, "chunk_size")
  validation.check_index_range(labels, num_classes, name="neighbor_labels")
  if queries.shape[0] == 0:
    return jnp.zeros((0,), jnp.int32)
  if mesh is not None and DATA_AXIS not in mesh.shape:
    raise ValueError(f"mesh must have an axis named {DATA_AXIS!r}; got axes {mesh.axis_names}.")
  return _knn_predict(
    queries, bank, labels, k=k, num_classes=num_classes, chunk_size=chunk_size, mesh=mesh
  )


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "chunk_size", "mesh"))
def _knn_predict(queries, bank, labels, *, k, num_classes, chunk_size, mesh):
  num_queries = queries.shape[0]
  num_chunks = -(-num_queries // chunk_size)
  if mesh is not None:
    queries = _place(queries, mesh, PartitionSpec())  # every device votes for every query
  padded = jnp.pad(queries, ((0, num_chunks * chunk_size - num_queries), (0, 0)))
  precision = jax.lax.Precision.HIGHEST

  def classify(chunk):
    _, nearest = jax.lax.top_k(-dknn.sq_distances(chunk, bank, precision), k)
    return _vote(labels[nearest], num_classes)

  chunks = padded.reshape(num_chunks, chunk_size, -1)
  if mesh is None:
    predictions = jax.lax.map(classify, chunks)
  else:
    predictions = _sharded_predictions(chunks, bank, labels, k, num_classes, mesh)
  return predictions.reshape(-1)[:num_queries]


def _place(x: jax.Array, mesh: Mesh, spec: PartitionSpec) -> jax.Array:
  """`x` laid out as `spec` on `mesh`: a reshard for Explicit axes, a constraint for Auto."""
  sharding = NamedSharding(mesh, spec)
  if mesh.axis_types[mesh.axis_names.index(DATA_AXIS)] == AxisType.Explicit:
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def _sharded_predictions(chunks, bank, labels, k, num_classes, mesh):
  axis = DATA_AXIS
  devices = mesh.shape[axis]
  bank = jnp.asarray(bank)
  num = bank.shape[0]
  per_device = -(-num // devices)
  pad = per_device * devices - num
  bank = jnp.pad(bank, ((0, pad), (0, 0)))
  labels = jnp.pad(labels, (0, pad))
  valid = jnp.arange(per_device * devices) < num
  local_k = min(k, per_device)

  def local(chunks, bank, labels, valid):
    def classify(chunk):
      scores = -dknn.sq_distances(chunk, bank, jax.lax.Precision.HIGHEST)
      scores = jnp.where(valid[None, :], scores, -jnp.inf)  # padding never wins
      values, nearest = jax.lax.top_k(scores, local_k)
      # Device order = global index order, so top_k's lower-position-first tie rule holds.
      values = jax.lax.all_gather(values, axis, axis=1, tiled=True)
      classes = jax.lax.all_gather(labels[nearest], axis, axis=1, tiled=True)
      _, best = jax.lax.top_k(values, k)
      return _vote(jnp.take_along_axis(classes, best, axis=1), num_classes)

    return jax.lax.map(classify, chunks)

  spec = PartitionSpec(axis)
  bank, labels, valid = (_place(x, mesh, spec) for x in (bank, labels, valid))
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(PartitionSpec(), spec, spec, spec),
    out_specs=PartitionSpec(),
    check_vma=False,
  )(chunks, bank, labels, valid)
