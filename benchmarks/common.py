"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from subsets_jax._src import sharding


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


def median_times(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
  """Median wall time of each `fns[name]()`, the calls interleaved round-robin.

  Interleaving puts every contender through the same phases of a noisy machine (this
  VM's speed drifts by up to 2x over minutes), so their ratio is fair.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


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


def add_host_devices_flag(parser: argparse.ArgumentParser, effect: str) -> None:
  parser.add_argument(
    "--host_devices",
    type=int,
    default=1,
    help=f"split the CPU into this many JAX devices; {effect}",
  )


def restart_with_host_devices(count: int, module: str) -> None:
  """Re-runs `python -m module <same args>` with `count` CPU devices unless already so."""
  sharding.reexec_with_host_devices(count, ["-m", module, *sys.argv[1:]])
