"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import numpy as np


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
