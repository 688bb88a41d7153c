"""Settings of the test session: strict JAX, XLA's compile effort, the order of the tests."""

import jax
import numpy as np
import pytest


def pytest_collection_modifyitems(items):
  # The modules with long tests (marked slow) first, each module kept together: under
  # pytest-xdist they then start at once and run beside the many short ones, not last.
  slow = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(autouse=True, scope="session")
def _strict_jax():
  # Implicit rank promotion hides shape bugs; make it an error in every test and fixture.
  # One setting for the whole session also keeps the trace context of a module's shared
  # fixtures equal to its tests', so their compiled functions are reused, not recompiled.
  before = jax.config.jax_numpy_rank_promotion
  jax.config.update("jax_numpy_rank_promotion", "raise")
  yield
  jax.config.update("jax_numpy_rank_promotion", before)


@pytest.fixture(autouse=True, scope="module")
def _compile_effort(request):
  # Most tests compile small programs and run them for milliseconds, so compiling dominates
  # the suite: XLA compiles them with most optimisations off. Modules marked xla_optimized
  # train networks long enough that the optimised code pays. Processes the tests start
  # (the examples' command lines, the notebook) compile as a user's would. The compiled
  # code is dropped after each module (below), so no module reuses another's.
  optimized = any(m.name == "xla_optimized" for m in request.node.iter_markers())
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not optimized)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


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
