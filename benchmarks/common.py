"""Helpers shared by the benchmark scripts: interleaved timing, results, machine facts."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def median_times(fns: dict, repeats: int, warmup: int = 2, block: int = 3) -> dict[str, float]:
  """Median wall time of each `fns[name]()`, in rounds of `block` timed calls per contender.

  The rounds alternate between the contenders, so drifts of the machine's speed hit them
  alike; each round starts with one untimed call of its contender.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(-(-repeats // block)):
    for name, fn in fns.items():
      fn()
      for _ in range(block):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(ts) for name, ts in times.items()}


def call_times(fn, repeats: int) -> list[float]:
  """Wall times of `repeats` calls of `fn()` (blocked until ready), after one untimed call."""
  import jax

  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def load_library(root: pathlib.Path) -> None:
  """Makes `import subsets_jax` load the package under `root` (ahead of an installed one).

  Call it before anything imports `subsets_jax`: a worker process measures one checkout.
  """
  package = root / "subsets_jax"
  spec = importlib.util.spec_from_file_location(
    "subsets_jax", package / "__init__.py", submodule_search_locations=[str(package)]
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules["subsets_jax"] = module
  spec.loader.exec_module(module)


def run_worker(module: str, library_root: pathlib.Path, flags: list[str]):
  """Runs `python -m module --worker --library ROOT FLAGS` here; returns its JSON stdout."""
  command = [sys.executable, "-m", module, "--worker", "--library", str(library_root), *flags]
  run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  if run.returncode:
    raise RuntimeError(f"worker for {library_root} failed:\n{run.stderr[-3000:]}")
  return json.loads(run.stdout)


def run_checkouts(module: str, flags: list[str], baseline: str | None, rounds: int) -> dict:
  """`run_worker` for this checkout and, with `baseline`, another, alternating over `rounds`:
  {"current": [JSON per round], "baseline": [...]} (no "baseline" without one)."""
  versions = {"current": REPO}
  if baseline:
    versions["baseline"] = pathlib.Path(baseline).resolve()
  runs = {name: [] for name in versions}
  for _ in range(rounds):
    for name, root in versions.items():
      runs[name].append(run_worker(module, root, flags))
  return runs


def median_row(runs: dict, i: int) -> dict[str, float]:
  """Row `i` of `run_checkouts`' results: the median time over every round of this checkout
  and, with a baseline, the baseline's and the ratio baseline / current."""
  row = {"time_s": statistics.median(t for r in runs["current"] for t in r[i]["times_s"])}
  if "baseline" in runs:
    row["baseline_time_s"] = statistics.median(t for r in runs["baseline"] for t in r[i]["times_s"])
    row["baseline_over_current"] = row["baseline_time_s"] / row["time_s"]
  return row


def compiled_temp_bytes(fn, *args) -> int:
  """Temporary bytes of jitted `fn` compiled for `args` (arrays or ShapeDtypeStructs)."""
  return int(fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def _vector_isa(lscpu: str) -> str | None:
  """The widest x86 vector extension in lscpu's flags: AVX-512 or AVX2 (None otherwise)."""
  flags = next(
    (line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []
  )
  if "avx512f" in flags:
    return "AVX-512"
  return "AVX2" if "avx2" in flags else None


def machine() -> dict[str, str]:
  """The CPU model and vector extension (from lscpu where available), Python and JAX versions.

  The vector extension is part of the name because one model name ("AMD EPYC") covers
  machines with and without AVX-512, which run the same program at different speeds.
  """
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line)
    isa = _vector_isa(out)
    if isa:
      cpu = f"{cpu} ({isa})"
  except (OSError, StopIteration, subprocess.SubprocessError):
    pass
  return {
    "cpu": cpu,
    "device": str(jax.devices()[0]),
    "jax": jax.__version__,
    "python": platform.python_version(),
    "date": time.strftime("%Y-%m-%d"),
  }


def write_results(path: str | None, results: dict) -> None:
  """Writes a benchmark's results as JSON to `path` (nothing when `path` is None)."""
  if path:
    with open(path, "w") as f:
      json.dump(results, f, indent=1)


def torch_sync(device: str):
  """A function that waits for PyTorch's queued work on `device` (a no-op on CPU)."""
  import torch

  if device.startswith("cuda"):
    return torch.cuda.synchronize
  return lambda: None
