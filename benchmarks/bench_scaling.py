"""Data-parallel scaling of the dKNN train_step over simulated CPU devices (1 vs 2 vs 4).

  python -m benchmarks.bench_scaling [--devices 1 2] [--steps 20]

Restarts itself with max(--devices) CPU devices (XLA_FLAGS), then times the same jitted
train_step with the state replicated and each step's 100 queries + 100 neighbours split over
1, 2, ... devices. The simulated devices share the machine's cores; on this 2-core VM two
devices nearly halve the step time, because one XLA:CPU device does not keep both cores busy.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from benchmarks.common import (
  median_time,
  restart_for_timing,
  synthetic_batch,
  timed_jax_train_step,
  write_results,
)
from subsets_jax._src import sharding


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  restart_for_timing(max(args.devices), "benchmarks.bench_scaling")
  host_batch = synthetic_batch()
  results = {
    "date": time.strftime("%Y-%m-%d"),
    "platform": jax.devices()[0].platform,
    "cpu_cores": os.cpu_count(),
    "step_s": {},
  }
  for count in args.devices:
    mesh = sharding.data_mesh(count, divides=(100,))
    step = timed_jax_train_step(mesh, sharding.shard_batch(host_batch, mesh))
    results["step_s"][count] = median_time(step, args.steps, warmup=3)
    print(f"{count} device(s): {results['step_s'][count] * 1e3:.1f} ms per step")
  base = results["step_s"][args.devices[0]]
  for count in args.devices[1:]:
    print(
      f"step time {count} vs {args.devices[0]} device(s): {results['step_s'][count] / base:.2f}x"
    )
  write_results(args.out, results)


if __name__ == "__main__":
  main()
