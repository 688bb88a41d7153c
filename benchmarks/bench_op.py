"""Op benchmark: relaxed top-k (JAX) vs the seed's PyTorch SubsetOperator, roofline, memory.

  python -m benchmarks.bench_op [--cases small|all] [--repeats 12] [--out results.json]
                                [--xla_cpu_vector_width 512] [--implementation cpu_kernel]

Prints, per (B, N, k) case: median forward and forward+backward times for JAX (jit) and
PyTorch (eager, same inputs), with the Gumbel noise (`gumbel_topk_relaxed` vs the seed's
`SubsetOperator`) and without it (`soft_topk` vs the same recursion on the same perturbed
scores), their ratios, the roofline floor measured on this machine against the noise-free
forward+backward, and the compiled peak temporary memory of forward+backward as k grows.
All contenders of a case are timed interleaved (round-robin), so drifts of this VM's speed
hit them alike. `--xla_cpu_vector_width 512` compiles every JAX function here with XLA:CPU's
`xla_cpu_prefer_vector_width` option (a user's `jax.jit(..., compiler_options=...)`; AVX-512
machines), ceilings included. `--implementation cpu_kernel` times the library's fused C++
CPU kernel instead of its XLA form (the memory figures then add the kernel's scratch pool).
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import subsets_jax as sj
from benchmarks.common import (
  add_host_devices_flag,
  add_settle_flag,
  add_torch_device_flag,
  compiled_temp_bytes,
  median_time,
  median_times,
  restart_for_timing,
  torch_sync,
  write_results,
)
from subsets_jax._src import cpu_kernel, gumbel, sharding

CASES = [(100, 100, 9), (100, 1000, 9), (100, 10000, 9), (100, 60000, 9), (16, 100000, 64)]
TAU = 1.0


def jax_fns(k: int, vjp: str, jit=jax.jit, implementation: str = "xla"):
  kw = {"vjp": vjp, "implementation": implementation}
  fwd = jit(lambda key, s: sj.gumbel_topk_relaxed(key, s, k, TAU, **kw))

  def loss(s, key, w):
    return jnp.sum(w * sj.gumbel_topk_relaxed(key, s, k, TAU, **kw))

  fwd_bwd = jit(jax.value_and_grad(loss))
  return fwd, fwd_bwd


def measure_ceilings(repeats: int, jit=jax.jit) -> dict[str, float]:
  """Memory bandwidth (large copy) and exp throughput, measured here."""
  n = 64 * 2**20  # 256 MB of float32
  x = jnp.ones((n,), jnp.float32)
  copy = jit(lambda v: v + 1.0)
  t_copy = median_time(lambda: copy(x).block_until_ready(), repeats)
  # 2^30 exps from 16 MB of input: the outer product is fused into the reduction, so
  # this is compute bound on CPUs and GPUs alike (a plain exp of an array is memory
  # bound on a GPU, and was 3x under this ceiling on the CPU too).
  v = jnp.linspace(-5, 5, 4 * 2**20, dtype=jnp.float32)
  c = jnp.linspace(0.5, 1.0, 256, dtype=jnp.float32)
  exp = jit(lambda v, c: jnp.sum(jnp.exp(v[:, None] * c)))
  t_exp = median_time(lambda: exp(v, c).block_until_ready(), repeats)
  return {"bandwidth_gb_s": 2 * n * 4 / t_copy / 1e9, "exp_per_s": v.size * c.size / t_exp}


def roofline_floor(b, n, k, ceilings, backward: bool) -> float:
  """Larger of bytes/bandwidth and transcendentals/exp-rate (2 per element per step)."""
  passes = 2 if backward else 1
  bytes_moved = passes * 2 * b * n * 4
  transcendentals = passes * 2 * k * b * n
  return max(
    bytes_moved / (ceilings["bandwidth_gb_s"] * 1e9), transcendentals / ceilings["exp_per_s"]
  )


def fwd_bwd_temp_bytes(b, n, k, vjp, jit=jax.jit, implementation="xla") -> int:
  """XLA's compiled temporaries; with the C++ kernel, plus what its scratch pool holds after
  the call (the pool keeps its largest buffers: call with k ascending, before larger cases)."""
  _, fwd_bwd = jax_fns(k, vjp, jit, implementation)
  s = jax.ShapeDtypeStruct((b, n), jnp.float32)
  temp = compiled_temp_bytes(fwd_bwd, s, jax.random.key(0), s)
  if implementation == "cpu_kernel":
    x = jnp.ones((b, n), jnp.float32)
    jax.block_until_ready(fwd_bwd(x, jax.random.key(0), x))
    temp += cpu_kernel.scratch_bytes()
  return temp


def print_budgets(rows: list[dict]) -> None:
  """What a 5x speed-up over PyTorch leaves per case, next to what cannot be avoided.

  With noise: PyTorch's forward+backward / 5 against the time JAX takes to perturb the
  scores with the key's Gumbel noise alone (`gumbel.perturb`, what `gumbel_topk_relaxed`
  adds to `soft_topk`, with the implementation timed) plus the relaxation's roofline
  floor. Without noise: PyTorch's noise-free forward+backward / 5 against the floor. A
  ratio above 1 means 5x is out of reach with this noise code.
  """
  print("\n5x budgets (ms): what 1/5 of PyTorch's time leaves, against a lower bound")
  print(
    f"{'B':>4} {'N':>7} {'k':>3} | {'budget':>8} {'noise':>8} {'floor':>7} "
    f"{'(noise+floor)/budget':>20} | {'soft budget':>11} {'floor/budget':>12}"
  )
  for r in rows:
    floor = r["floor_fwd_bwd_s"]
    print(
      f"{r['B']:>4} {r['N']:>7} {r['k']:>3} | {r['budget_5x_s'] * 1e3:8.2f} "
      f"{r['jax_noise_s'] * 1e3:8.2f} {floor * 1e3:7.2f} "
      f"{(r['jax_noise_s'] + floor) / r['budget_5x_s']:20.2f} | "
      f"{r['soft_budget_5x_s'] * 1e3:11.2f} {floor / r['soft_budget_5x_s']:12.2f}"
    )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", choices=("small", "all"), default="all")
  p.add_argument("--repeats", type=int, default=12)
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--vjp", choices=("recompute", "autodiff"), default="recompute")
  p.add_argument(
    "--implementation",
    choices=("xla", "cpu_kernel"),
    default="xla",
    help="the library's implementation timed (cpu_kernel: its fused C++ CPU kernel)",
  )
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument(
    "--xla_cpu_vector_width",
    type=int,
    default=None,
    help="compile the JAX functions with this xla_cpu_prefer_vector_width (default: XLA's)",
  )
  add_host_devices_flag(p, "rows are sharded across them")
  add_torch_device_flag(p)
  add_settle_flag(p)
  args = p.parse_args()
  restart_for_timing(args.host_devices, "benchmarks.bench_op")
  mesh = sharding.data_mesh(args.host_devices, divides=tuple(b for b, _, _ in CASES))
  cases = CASES if args.cases == "all" else CASES[:2]
  torch = None
  if not args.no_torch:
    import torch

    from benchmarks import torch_reference
  options = None
  if args.xla_cpu_vector_width is not None:
    options = {"xla_cpu_prefer_vector_width": args.xla_cpu_vector_width}
  jit = functools.partial(jax.jit, compiler_options=options)
  results = {
    "machine": f"{platform.node()} {platform.processor()} ({jax.devices()[0]})",
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "compiler_options": options,
    "implementation": args.implementation,
    "cases": [],
  }
  if torch is not None:
    results["torch"] = f"{torch.__version__} on {args.torch_device}"
    sync = torch_sync(args.torch_device)
  ceilings = measure_ceilings(args.repeats, jit)
  results["ceilings"] = ceilings
  print(
    f"device {jax.devices()[0]}; bandwidth {ceilings['bandwidth_gb_s']:.1f} GB/s, "
    f"exp {ceilings['exp_per_s'] / 1e9:.2f} G/s; JAX compiler options {options}"
  )
  # First: the C++ kernel's scratch pool then holds what these calls need, not a larger case's.
  print("compiled temporary memory of forward+backward, B=100, N=10000 (MB):")
  results["memory"] = []
  vjps = ("recompute",) if args.implementation == "cpu_kernel" else ("recompute", "autodiff")
  for vjp in vjps:
    line = {"vjp": vjp}
    for k in (1, 8, 64, 256):
      line[k] = fwd_bwd_temp_bytes(100, 10000, k, vjp, jit, args.implementation) / 2**20
    results["memory"].append(line)
    print(
      f"  {vjp:>9}: "
      + ", ".join(f"k={k}: {line[k]:.1f}" for k in (1, 8, 64, 256))
      + f"   (k=256 / k=8 = {line[256] / line[8]:.2f})"
    )
  header = (
    f"{'B':>4} {'N':>7} {'k':>3} | {'jax fwd':>8} {'torch':>8} {'ratio':>5} | "
    f"{'jax f+b':>8} {'torch':>8} {'ratio':>5} | {'soft f+b':>8} {'torch':>8} {'ratio':>5} | "
    f"{'floor':>7} {'x floor':>7}"
  )
  print("times in ms; ratio = torch / jax; 'soft': no noise on either side, same perturbed scores")
  print(header)
  rng = np.random.default_rng(0)
  for b, n, k in cases:
    scores_np = rng.normal(size=(b, n)).astype(np.float32) * 2
    w_np = rng.normal(size=(b, n)).astype(np.float32)
    scores, w = sharding.shard_batch((scores_np, w_np), mesh)
    key = jax.random.key(1)
    fwd, fwd_bwd = jax_fns(k, args.vjp, jit, args.implementation)
    perturbed = jax.block_until_ready(scores + sj.gumbel_noise(key, scores))
    soft = lambda s: sj.soft_topk(s, k, TAU, vjp=args.vjp, implementation=args.implementation)
    soft_fwd_bwd = jit(jax.value_and_grad(lambda s, w: jnp.sum(w * soft(s))))
    # What `gumbel_topk_relaxed` adds to `soft_topk`: the key's noise added to the scores,
    # drawn as this implementation draws it (the kernel's threefry words with "cpu_kernel";
    # the same values either way).
    noise = jit(lambda key, s: gumbel.perturb(key, s, args.implementation))
    fns = {
      "jax_noise_s": lambda: noise(key, scores).block_until_ready(),
      "jax_fwd_s": lambda: fwd(key, scores).block_until_ready(),
      "jax_fwd_bwd_s": lambda: jax.block_until_ready(fwd_bwd(scores, key, w)),
      "jax_soft_fwd_bwd_s": lambda: jax.block_until_ready(soft_fwd_bwd(perturbed, w)),
    }
    row = {"B": b, "N": n, "k": k}
    if torch is not None:
      dev = args.torch_device
      ts, tw = torch.from_numpy(scores_np).to(dev), torch.from_numpy(w_np).to(dev)
      tp = torch.from_numpy(np.array(perturbed)).to(dev)
      # Same function: compare on the same perturbed scores, where the clamp is inactive.
      ours = np.asarray(soft(perturbed))
      theirs = torch_reference.subset_operator(tp, k, TAU, noise=False).cpu().numpy()
      row["max_abs_diff_vs_torch"] = float(np.abs(ours - theirs).max())

      def torch_fwd():
        with torch.no_grad():
          torch_reference.subset_operator(ts, k, TAU)
        sync()

      def torch_fwd_bwd(source=ts, noise=True):
        s = source.clone().requires_grad_(True)
        (tw * torch_reference.subset_operator(s, k, TAU, noise=noise)).sum().backward()
        sync()

      fns["torch_fwd_s"] = torch_fwd
      fns["torch_fwd_bwd_s"] = torch_fwd_bwd
      fns["torch_soft_fwd_bwd_s"] = lambda: torch_fwd_bwd(tp, noise=False)
    row.update(median_times(fns, args.repeats, settle_s=args.settle_ms / 1e3))
    if torch is not None:
      for name in ("fwd", "fwd_bwd", "soft_fwd_bwd"):
        row[f"ratio_{name}"] = row[f"torch_{name}_s"] / row[f"jax_{name}_s"]
      # What a 5x target leaves: with noise, JAX's Gumbel noise and the relaxation's
      # floor must fit in it; without, the floor must (`print_budgets`).
      row["budget_5x_s"] = row["torch_fwd_bwd_s"] / 5
      row["soft_budget_5x_s"] = row["torch_soft_fwd_bwd_s"] / 5
    row["floor_fwd_bwd_s"] = roofline_floor(b, n, k, ceilings, backward=True)
    # The floor counts the relaxation only, not the noise: compare the noise-free op.
    row["over_floor"] = row["jax_soft_fwd_bwd_s"] / row["floor_fwd_bwd_s"]
    results["cases"].append(row)

    def ms(key):
      return f"{row[key] * 1e3:8.2f}" if key in row else f"{'-':>8}"

    def ratio(key):
      return f"{row[key]:5.1f}" if key in row else f"{'-':>5}"

    print(
      f"{b:>4} {n:>7} {k:>3} | {ms('jax_fwd_s')} {ms('torch_fwd_s')} {ratio('ratio_fwd')} | "
      f"{ms('jax_fwd_bwd_s')} {ms('torch_fwd_bwd_s')} {ratio('ratio_fwd_bwd')} | "
      f"{ms('jax_soft_fwd_bwd_s')} {ms('torch_soft_fwd_bwd_s')} {ratio('ratio_soft_fwd_bwd')} | "
      f"{row['floor_fwd_bwd_s'] * 1e3:7.2f} {row['over_floor']:7.1f}"
      + (f"   max|diff| {row['max_abs_diff_vs_torch']:.1e}" if torch else "")
    )
  if torch is not None:
    print_budgets(results["cases"])
  write_results(args.out, results)


if __name__ == "__main__":
  main()
