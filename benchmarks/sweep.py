"""A resumable sweep of training runs whose results live in one JSON file.

`run(keys, run_one, path, root)` runs `run_one(key)` for every key not yet in the JSON at
`path` and records its entry there at once (an atomic replace), so an interrupted sweep
continues where it stopped. A lock file per running key (`root/<key>.lock`, naming the
process) lets two sweep processes share the work: each skips keys held by a live process.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
from collections.abc import Callable, Iterable

from benchmarks import common

_MACHINE = common.machine()
HARDWARE = f"{os.cpu_count()}-core {_MACHINE['cpu']}, JAX {_MACHINE['jax']}"


def load(path: pathlib.Path) -> dict:
  return json.loads(path.read_text()) if path.exists() else {}


def record(path: pathlib.Path, key: str, entry: dict) -> dict:
  """Adds `entry` under `key` to what the file holds now; returns all entries."""
  results = load(path)
  results[key] = entry
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")
  tmp.replace(path)
  return results


def runs_by_seed(results: dict, prefix: str) -> list[dict]:
  """The entries keyed `"<prefix>/seed<S>"`, ordered by S (the JSON keeps keys sorted as text)."""
  pattern = re.compile(re.escape(prefix) + r"/seed(\d+)")
  seeds = {int(m.group(1)): v for k, v in results.items() if (m := pattern.fullmatch(k))}
  return [seeds[s] for s in sorted(seeds)]


def _held(lock: pathlib.Path) -> bool:
  """Whether a live process runs this key (its lock names the process)."""
  try:
    os.kill(int(lock.read_text()), 0)
  except (OSError, ValueError):
    return False
  return True


def run(
  keys: Iterable[str],
  run_one: Callable[[str], dict],
  path: pathlib.Path,
  root: pathlib.Path,
  describe: Callable[[str, dict], str] = lambda key, entry: key,
) -> dict:
  """Runs every key missing from `path` and not held by another process, in order."""
  for key in keys:
    lock = root / f"{key}.lock"
    if key in load(path) or _held(lock):
      continue
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    try:
      entry = run_one(key)
      record(path, key, entry)
    finally:
      lock.unlink(missing_ok=True)
    print(describe(key, entry), flush=True)
  return load(path)


def run_or_load(
  report_only: bool,
  keys: Iterable[str],
  run_one: Callable[[str], dict],
  path: pathlib.Path,
  root: pathlib.Path,
  describe: Callable[[str, dict], str],
) -> dict:
  """The entries at `path`, after running the missing keys unless `report_only`."""
  return load(path) if report_only else run(keys, run_one, path, root, describe)


def mean_sd(values: list[float], digits: int) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
