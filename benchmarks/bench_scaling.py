"""Data-parallel scaling of the dKNN train_step over simulated CPU devices (1 vs 2 vs 4).

  python -m benchmarks.bench_scaling [--devices 1 2] [--steps 20]

Forces the host platform to expose max(--devices) CPU devices (XLA_FLAGS, set before JAX
starts), then times the same jitted train_step with the state replicated and each step's
100 queries + 100 neighbours split over 1, 2, ... devices. On a 2-core machine the simulated
devices share the same cores, so no speed-up is expected: this records the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  if "jax" in sys.modules:
    raise RuntimeError("bench_scaling must set XLA_FLAGS before JAX is imported")
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(args.devices)}"
  )
  import jax
  import jax.numpy as jnp

  from benchmarks.common import synthetic_batch
  from subsets_jax import dknn_training as training
  from subsets_jax._src import sharding

  host_batch = synthetic_batch()
  results = {
    "date": time.strftime("%Y-%m-%d"),
    "platform": jax.devices()[0].platform,
    "cpu_cores": os.cpu_count(),
    "step_s": {},
  }
  for count in args.devices:
    mesh = sharding.data_mesh(count, divides=(100,))
    state = sharding.replicate(
      training.create_train_state(jax.random.key(0), training.TrainConfig(), (28, 28, 1), 550),
      mesh,
    )
    batch = sharding.shard_batch(host_batch, mesh)
    times = []
    for i in range(args.steps + 3):
      t = time.perf_counter()
      state, metrics = training.train_step_jit(
        state, batch, jax.random.key(i), jnp.float32(1.0), k=9
      )
      jax.block_until_ready(metrics)
      if i >= 3:
        times.append(time.perf_counter() - t)
    results["step_s"][count] = statistics.median(times)
    print(f"{count} device(s): {results['step_s'][count] * 1e3:.1f} ms per step")
  base = results["step_s"][args.devices[0]]
  for count in args.devices[1:]:
    print(
      f"step time {count} vs {args.devices[0]} device(s): {results['step_s'][count] / base:.2f}x"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
