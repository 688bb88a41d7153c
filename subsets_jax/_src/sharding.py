"""Placing batches and states on a 1-D data-parallel device mesh (single or multi-host)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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


# The most CPU devices `default_host_devices` asks for: data parallelism across cores was
# measured on 2 cores only (benchmarks/README.md); more devices than this split the
# per-step batches into slivers.
_MAX_DEFAULT_HOST_DEVICES = 8


def default_host_devices() -> int:
  """One JAX CPU device per core this process may run on, at most 8.

  One device per core, trained data-parallel, was 1.2-1.5x faster per step than one
  device on a 2-core CPU under glibc's malloc defaults, where the one-device step
  page-faults its buffers in afresh; with `malloc_env.KEEP_FREED_MEMORY` both took
  27-28 ms, and evaluation was faster on two (5.0 vs 7.8 s; benchmarks/README.md). The
  flag only shapes the CPU backend, so it is harmless where an accelerator is the
  default backend.
  """
  import os

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(cores or 1, _MAX_DEFAULT_HOST_DEVICES))


def host_device_flag(count: int) -> str:
  """The XLA flag that splits the host CPU into `count` JAX devices."""
  return f"--xla_force_host_platform_device_count={count}"


def reexec_with_host_devices(
  count: int, argv: list[str], env: dict[str, str] | None = None
) -> None:
  """Restarts this process with `count` CPU devices and `env` set, unless it has them.

  XLA reads the flag once, when the backend starts (and glibc its malloc settings at
  start), so a script that wants several CPU devices (data parallelism across cores)
  restarts itself with `XLA_FLAGS` set. Variables already in the environment are kept.
  Returns only when no restart is needed.
  """
  import os
  import sys

  missing = {name: value for name, value in (env or {}).items() if name not in os.environ}
  flags = os.environ.get("XLA_FLAGS", "")
  needs_flag = count > 1 and host_device_flag(count) not in flags
  if not needs_flag and not missing:
    return
  new_env = dict(os.environ, **missing)
  if needs_flag:
    new_env["XLA_FLAGS"] = f"{flags} {host_device_flag(count)}".strip()
  os.execve(sys.executable, [sys.executable, *argv], new_env)
