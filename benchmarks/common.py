"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from subsets_jax._src import malloc_env, sharding


def median_time(fn, repeats: int, warmup: int = 2) -> float:
  """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def median_times(
  fns: dict, repeats: int, warmup: int = 2, block: int = 3, settle_s: float = 0.015
) -> dict[str, float]:
  """Median wall time of each `fns[name]()`: rounds of `block` consecutive timed calls each.

  The rounds alternate between the contenders, so drifts of this VM's speed (up to 2x
  over minutes) hit them alike. Each round first calls its contender untimed for at least
  `settle_s` (at least once): after its last parallel region PyTorch's OpenMP workers keep
  spinning for about 8 ms, and JAX calls made meanwhile share the 2 cores with them (at
  (100, 1000, 9) the first seven calls after a PyTorch call took 1.64 down to 1.04 ms, the
  rest 0.67-0.82 ms; PyTorch's first call after JAX was also 1.5x its usual time). The
  timed calls then see each contender as a program that runs it alone would.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(-(-repeats // block)):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      while time.perf_counter() - start < settle_s:
        fn()
      for _ in range(block):
        t = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def write_results(path: str | None, results: dict) -> None:
  """Writes a benchmark's results as JSON to `path` (nothing when `path` is None)."""
  if path:
    with open(path, "w") as f:
      json.dump(results, f, indent=1)


def compiled_temp_bytes(fn, *args) -> int:
  """Temporary bytes of jitted `fn` compiled for `args` (arrays or ShapeDtypeStructs)."""
  return int(fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def synthetic_batch(seed: int = 0, size: int = 100) -> dict[str, np.ndarray]:
  """`size` queries and `size` neighbours of MNIST shape, random pixels and labels."""
  rng = np.random.default_rng(seed)
  images = rng.random((2 * size, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 10, 2 * size).astype(np.int32)
  return {
    "query_images": images[:size],
    "query_labels": labels[:size],
    "neighbor_images": images[size:],
    "neighbor_labels": labels[size:],
  }


def timed_jax_train_step(mesh, batch, *, num_samples: int = 1, implementation: str = "xla"):
  """A no-argument call of one jitted dKNN train step (k = 9, tau = 1) on `mesh`, waiting
  for it; each call draws fresh noise. Fresh replicated state, reference configuration."""
  import jax
  import jax.numpy as jnp

  from subsets_jax import dknn_training as training

  state = training.create_train_state(jax.random.key(0), training.TrainConfig(), (28, 28, 1), 550)
  holder = {"state": sharding.replicate(state, mesh), "i": 0}

  def step():
    holder["i"] += 1
    holder["state"], metrics = training.train_step_jit(
      holder["state"],
      batch,
      jax.random.key(holder["i"]),
      jnp.float32(1.0),
      k=9,
      num_samples=num_samples,
      separate_passes=training.prefers_separate_passes(mesh),
      implementation=implementation,
    )
    jax.block_until_ready(metrics)

  return step


def add_host_devices_flag(parser: argparse.ArgumentParser, effect: str) -> None:
  parser.add_argument(
    "--host_devices",
    type=int,
    default=1,
    help=f"split the CPU into this many JAX devices; {effect}",
  )


# The same settings as the example's (subsets_jax/_src/malloc_env.py), for both frameworks:
# glibc hands large freed blocks back to the OS and maps fresh zeroed pages on the next
# call; with JAX and PyTorch allocating in turn, both then page-fault on every call
# (measured at (100, 60000, 9), interleaved: JAX forward 98 -> 145 ms, PyTorch forward
# 112 -> 140 ms). Fixed thresholds keep freed memory in the heap, for both alike. The top
# pad (sixth session) does the same for the per-thread arenas of XLA's worker threads: glibc
# unmaps such a 64 MiB heap once it is free, so each call re-faulted 2-3 fresh 24 MB buffers
# (11,700-17,600 minor faults per call; JAX's noisy forward+backward at (100, 60000, 9)
# interleaved with PyTorch 80-95 ms, 36-47 ms with the pad and 0 faults; PyTorch 135-147 ms
# either way once warm). Left at 32 MiB (glibc's largest automatic value): XLA:CPU takes
# an executable's temporaries as one block, over 32 MiB for the XLA form at (100, 60000, 9),
# which is then mapped fresh and faulted in on every call (15,000 faults; forward+backward
# 100-105 ms, 85 ms with a 1 GiB threshold), but with 1 GiB PyTorch's noisy forward+backward
# there went from 135-147 to 178-187 ms (no faults either way). Neither is free of bias;
# this keeps the setting of all earlier figures, and benchmarks/README.md gives both.
MALLOC_ENV = malloc_env.KEEP_FREED_MEMORY


def add_torch_device_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--torch_device",
    default="cpu",
    help="device of the PyTorch reference (cpu, or cuda on a GPU machine)",
  )


def add_settle_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--settle_ms",
    type=float,
    default=15.0,
    help="untimed calls of each contender before its timed calls in every round (0: none, "
    "the harness before the seventh session)",
  )


def torch_sync(device: str):
  """A function that waits for PyTorch's queued work on `device` (no-op on CPU)."""
  import torch

  if device.startswith("cuda"):
    return torch.cuda.synchronize
  return lambda: None


def restart_for_timing(host_devices: int, module: str) -> None:
  """Re-runs `python -m module <same args>` with MALLOC_ENV and `host_devices` CPU devices.

  Returns only when the process already has both (glibc and XLA read them at start).
  """
  sharding.reexec_with_host_devices(host_devices, ["-m", module, *sys.argv[1:]], MALLOC_ENV)
