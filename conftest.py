"""Strict JAX settings for every test, scoped to the test (nothing global at import)."""

import jax
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _strict_jax():
  # Implicit rank promotion hides shape bugs; make it an error inside tests.
  with jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  # One process runs the whole suite, and every compiled executable holds a few memory
  # maps; past the kernel's limit on a process's maps (vm.max_map_count, 65,530 by default)
  # XLA aborts while compiling. Dropping the compiled code after each module bounds the
  # count by one module's.
  yield
  jax.clear_caches()


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def rng():
  return np.random.default_rng(1234)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# Scripts run in their own processes by the tests (they set process-wide JAX options).
collect_ignore = [
  "examples/train_mnist.py",
  "examples/dknn/parallel_worker.py",
  "tests/knn_mesh_worker.py",
]
