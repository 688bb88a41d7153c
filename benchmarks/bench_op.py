"""Op benchmark of the relaxed top-k: speed against a baseline checkout and PyTorch, memory,
compile time.

  python -m benchmarks.bench_op [--baseline DIR] [--rounds 3] [--repeats 9] [--out FILE]
                                [--torch_device cpu|cuda] [--no_torch] [--cases small|all]

Times forward+backward (value and gradient of `sum(w * gumbel_topk_relaxed(key, s, k, 1))`)
at the reference sizes. Each version runs in its own worker process (`--worker`): this
checkout, and with `--baseline DIR` another checkout of the library (a `git worktree` of an
earlier commit), in alternating rounds, so that drifts of the machine's speed hit both
alike; the table gives the median over all rounds and the ratio baseline / current. The
reference PyTorch operator (ermongroup/subsets' `SubsetOperator`,
`benchmarks/torch_reference.py`) runs in a worker of its own in every round, without JAX
in its process, on the same inputs. The first round of this checkout also measures the
compiled peak temporary memory of forward+backward for k = 8 and k = 256 and the compile
time of `jax.jit(jax.grad(f)).lower(...).compile()` at (100, 1000) for both `vjp` modes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

from benchmarks.common import REPO, load_library, run_worker

CASES = [(100, 100, 9), (100, 1000, 9), (100, 10000, 9), (100, 60000, 9), (16, 100000, 64)]
TAU = 1.0


def _fwd_bwd(k: int, vjp: str = "recompute"):
  import jax
  import jax.numpy as jnp

  import subsets_jax as sj

  def loss(s, key, w):
    return jnp.sum(w * sj.gumbel_topk_relaxed(key, s, k, TAU, vjp=vjp))

  return jax.jit(jax.value_and_grad(loss))


def _compile_seconds(k: int, vjp: str, shape=(100, 1000), tries: int = 3) -> float:
  """Fastest of `tries` lower+compile of jit(grad) (each a fresh function: no cache hit)."""
  import jax
  import jax.numpy as jnp

  import subsets_jax as sj

  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  best = float("inf")
  for i in range(tries):
    # A distinct constant per try keeps JAX's caches from serving an earlier compile.
    scale = 1.0 + i

    def loss(s, key, w, scale=scale):
      return jnp.sum(w * scale * sj.gumbel_topk_relaxed(key, s, k, TAU, vjp=vjp))

    start = time.perf_counter()
    jax.jit(jax.grad(loss)).lower(spec, jax.random.key(0), spec).compile()
    best = min(best, time.perf_counter() - start)
  return best


def _inputs(cases):
  """The same float32 scores and weights `[B, N]` for every worker, from NumPy."""
  import numpy as np

  rng = np.random.default_rng(0)
  for b, n, k in cases:
    s = (rng.normal(size=(b, n)) * 2).astype(np.float32)
    yield b, n, k, s, rng.normal(size=(b, n)).astype(np.float32)


def _torch_worker(args, cases) -> dict:
  """Times the reference PyTorch operator alone in this process (no JAX loaded)."""
  import torch

  from benchmarks import torch_reference
  from benchmarks.common import median_times, torch_sync

  sync = torch_sync(args.torch_device)
  out = {"torch": f"{torch.__version__} on {args.torch_device}", "cases": []}
  for b, n, k, s_np, w_np in _inputs(cases):
    ts = torch.from_numpy(s_np).to(args.torch_device)
    tw = torch.from_numpy(w_np).to(args.torch_device)

    def torch_fwd_bwd(ts=ts, tw=tw, k=k):
      x = ts.clone().requires_grad_(True)
      (tw * torch_reference.subset_operator(x, k, TAU)).sum().backward()
      sync()

    out["cases"].append(
      {"B": b, "N": n, "k": k, **median_times({"torch_s": torch_fwd_bwd}, args.repeats)}
    )
  return out


def worker(args) -> None:
  """Times the `subsets_jax` under `--library`, or PyTorch alone (`--torch`); prints JSON."""
  cases = CASES if args.cases == "all" else CASES[:2]
  if args.torch:
    json.dump(_torch_worker(args, cases), sys.stdout)
    return
  load_library(pathlib.Path(args.library))
  import jax
  import jax.numpy as jnp

  import subsets_jax as sj
  from benchmarks.common import compiled_temp_bytes, machine, median_times

  out = {"library": str(pathlib.Path(sj.__file__).parent), "machine": machine(), "cases": []}
  key = jax.random.key(1)
  for b, n, k, s_np, w_np in _inputs(cases):
    s, w = jnp.asarray(s_np), jnp.asarray(w_np)
    fwd_bwd = _fwd_bwd(k)
    fns = {"jax_s": lambda: jax.block_until_ready(fwd_bwd(s, key, w))}
    out["cases"].append({"B": b, "N": n, "k": k, **median_times(fns, args.repeats)})
  if args.extras:
    spec = jax.ShapeDtypeStruct((100, 10000), jnp.float32)
    out["temp_mb"] = {
      k: compiled_temp_bytes(_fwd_bwd(k), spec, key, spec) / 2**20 for k in (8, 256)
    }
    out["compile_s"] = {
      f"{vjp}_k{k}": _compile_seconds(k, vjp) for k in (9, 256) for vjp in ("recompute", "autodiff")
    }
  json.dump(out, sys.stdout)


def _run_worker(library_root: pathlib.Path, args, *, torch: bool, extras: bool) -> dict:
  flags = ["--cases", args.cases, "--repeats", str(args.repeats)]
  flags += ["--torch_device", args.torch_device] + ["--torch"] * torch + ["--extras"] * extras
  return run_worker("benchmarks.bench_op", library_root, flags)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--baseline", default=None, help="another checkout of the library to compare")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds of worker processes")
  p.add_argument("--repeats", type=int, default=9, help="timed calls per case and round")
  p.add_argument("--cases", choices=("small", "all"), default="all")
  p.add_argument("--no_torch", action="store_true", help="leave the PyTorch reference out")
  p.add_argument("--torch_device", default="cpu", help="cpu, or cuda on a GPU machine")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--library", default=str(REPO), help=argparse.SUPPRESS)
  p.add_argument("--torch", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--extras", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args)
    return
  from benchmarks.common import write_results

  runs = {"current": [], "baseline": [], "torch": []}
  for r in range(args.rounds):
    runs["current"].append(_run_worker(REPO, args, torch=False, extras=r == 0))
    if args.baseline:
      runs["baseline"].append(
        _run_worker(pathlib.Path(args.baseline).resolve(), args, torch=False, extras=r == 0)
      )
    if not args.no_torch:
      runs["torch"].append(_run_worker(REPO, args, torch=True, extras=False))
    print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

  def median(version, i, field):
    return statistics.median(run["cases"][i][field] for run in runs[version])

  first = runs["current"][0]
  info = first["machine"]
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  if runs["torch"]:
    print(f"PyTorch {runs['torch'][0]['torch']}")
  print("forward+backward of gumbel_topk_relaxed, ms (median over rounds); ratios of times")
  header = f"{'B':>4} {'N':>7} {'k':>3} | {'current':>8}"
  header += f" {'baseline':>8} {'base/cur':>8}" if args.baseline else ""
  header += f" {'torch':>8} {'torch/cur':>9}" if not args.no_torch else ""
  print(header)
  table = []
  for i, case in enumerate(first["cases"]):
    row = {key: case[key] for key in ("B", "N", "k")}
    row["current_ms"] = median("current", i, "jax_s") * 1e3
    line = f"{row['B']:>4} {row['N']:>7} {row['k']:>3} | {row['current_ms']:8.2f}"
    if args.baseline:
      row["baseline_ms"] = median("baseline", i, "jax_s") * 1e3
      row["baseline_over_current"] = row["baseline_ms"] / row["current_ms"]
      line += f" {row['baseline_ms']:8.2f} {row['baseline_over_current']:8.2f}"
    if not args.no_torch:
      row["torch_ms"] = median("torch", i, "torch_s") * 1e3
      row["torch_over_current"] = row["torch_ms"] / row["current_ms"]
      line += f" {row['torch_ms']:8.2f} {row['torch_over_current']:9.2f}"
    table.append(row)
    print(line)
  for version in ("current", "baseline"):
    if not runs[version]:
      continue
    extras = runs[version][0]
    temp, comp = extras["temp_mb"], extras["compile_s"]
    print(
      f"{version}: temporary memory of forward+backward at (100, 10000): k=8 {temp['8']:.1f} MB,"
      f" k=256 {temp['256']:.1f} MB (k=256 / k=8 = {temp['256'] / temp['8']:.2f})"
    )
    for k in (9, 256):
      rec, auto = comp[f"recompute_k{k}"], comp[f"autodiff_k{k}"]
      print(
        f"{version}: compile jit(grad) at (100, 1000), k={k}: recompute {rec:.2f} s, "
        f"autodiff {auto:.2f} s (recompute / autodiff = {rec / auto:.2f})"
      )
  write_results(args.out, {"machine": info, "table": table, "runs": runs})


if __name__ == "__main__":
  main()
