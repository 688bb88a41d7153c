"""Placing batches and states on a 1-D data-parallel device mesh (single or multi-host)."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# The axis name `subsets_jax.knn_predict` shards the neighbour bank over.
DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None, *, divides: tuple[int, ...] = ()) -> Mesh:
  """A 1-D mesh over `num_devices` devices (default: the most devices dividing `divides`).

  Args:
    num_devices: devices to use; None picks the largest count <= jax.device_count()
      that divides every size in `divides` (e.g. the per-step batch sizes).
    divides: batch sizes the mesh must split evenly.
  """
  available = jax.device_count()
  if num_devices is None:
    num_devices = max(d for d in range(1, available + 1) if all(size % d == 0 for size in divides))
  if not 1 <= num_devices <= available:
    raise ValueError(f"num_devices must be in [1, {available}]; got {num_devices}.")
  for size in divides:
    if size % num_devices:
      raise ValueError(f"batch size {size} is not divisible by num_devices={num_devices}.")
  # Auto axes: XLA propagates shardings through the unchanged, unannotated train_step.
  return jax.make_mesh(
    (num_devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:num_devices]
  )


def replicate(tree, mesh: Mesh):
  """Copies every leaf of `tree` to every device of `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(tree, mesh: Mesh):
  """Splits the leading axis of every NumPy leaf over the mesh's data axis.

  Every process passes the same global arrays; each contributes the shards it holds
  (`jax.make_array_from_callback`), so this works across hosts too.
  """
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(place, tree)


# The most CPU devices `default_host_devices` asks for: more would split the per-step
# batches into slivers.
_MAX_DEFAULT_HOST_DEVICES = 8


def default_host_devices() -> int:
  """One JAX CPU device per core this process may run on, at most 8."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(cores or 1, _MAX_DEFAULT_HOST_DEVICES))


def set_host_devices(count: int) -> None:
  """Splits the host CPU into `count` JAX devices; call before the first JAX operation.

  Only shapes the CPU backend, so it is harmless where an accelerator is the default.
  """
  jax.config.update("jax_num_cpu_devices", count)
