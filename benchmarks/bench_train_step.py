"""Train-step benchmark: the jitted dKNN train_step vs the seed's PyTorch step; evaluation time.

  python -m benchmarks.bench_train_step [--steps 30] [--no_torch] [--out results.json]
                                        [--implementation cpu_kernel]

Both steps: 100 queries + 100 candidate neighbours (MNIST-sized images), the reference
ConvNet, k = 9, tau = 1, SGD momentum 0.9, weight decay 5e-4. Prints images/s and ratios,
then times the evaluation (embed 55,000 training images, kNN-classify 10,000 queries;
median of 3 after a warm-up run).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np

from benchmarks.common import (
  add_host_devices_flag,
  add_settle_flag,
  add_torch_device_flag,
  median_time,
  median_times,
  restart_for_timing,
  synthetic_batch,
  timed_jax_train_step,
  write_results,
)
from subsets_jax import dknn_training as training
from subsets_jax._src import sharding


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--skip_eval", action="store_true")
  p.add_argument("--out", default=None)
  p.add_argument("--implementation", choices=("xla", "cpu_kernel"), default="xla")
  add_host_devices_flag(p, "the step runs data-parallel across them")
  add_torch_device_flag(p)
  add_settle_flag(p)
  args = p.parse_args()
  restart_for_timing(args.host_devices, "benchmarks.bench_train_step")
  mesh = sharding.data_mesh(args.host_devices, divides=(100,))
  rng = np.random.default_rng(0)
  host_batch = synthetic_batch()
  batch = sharding.shard_batch(host_batch, mesh)
  results = {
    "machine": f"{platform.node()} {platform.processor()} ({jax.devices()[0]})",
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "jax_devices": mesh.size,
    "implementation": args.implementation,
  }
  config = training.TrainConfig()
  steps = {
    f"jax_step_s_samples{s}": timed_jax_train_step(
      mesh, batch, num_samples=s, implementation=args.implementation
    )
    for s in (1, 5)
  }
  if not args.no_torch:
    import torch

    from benchmarks import torch_reference

    torch.manual_seed(0)
    dev = args.torch_device
    results["torch"] = f"{torch.__version__} on {dev}"
    # The same images and labels, NCHW for PyTorch.
    qx, nx = (
      torch.from_numpy(host_batch[f"{n}_images"].transpose(0, 3, 1, 2).copy()).to(dev)
      for n in ("query", "neighbor")
    )
    qy, ny = (
      torch.from_numpy(host_batch[f"{n}_labels"].astype(np.int64)).to(dev)
      for n in ("query", "neighbor")
    )
    for num_samples in (1, 5):
      step = torch_reference.make_train_step(device=dev)
      steps[f"torch_step_s_samples{num_samples}"] = lambda step=step, s=num_samples: step(
        qx, qy, nx, ny, s
      )
  # Interleaved, so that drifts of the machine's speed hit JAX and PyTorch alike.
  results.update(median_times(steps, args.steps, warmup=3, settle_s=args.settle_ms / 1e3))
  print(f"device {jax.devices()[0]}; 200 images per step")
  for s in (1, 5):
    line = f"num_samples={s}: jax {results[f'jax_step_s_samples{s}'] * 1e3:.1f} ms"
    line += f" ({200 / results[f'jax_step_s_samples{s}']:.0f} img/s)"
    if f"torch_step_s_samples{s}" in results:
      t = results[f"torch_step_s_samples{s}"]
      ratio = results[f"jax_step_s_samples{s}"] / t
      results[f"ratio_jax_over_torch_samples{s}"] = ratio
      line += f"; torch {t * 1e3:.1f} ms ({200 / t:.0f} img/s); jax/torch time {ratio:.2f}"
    print(line)
  results["samples5_over_samples1"] = (
    results["jax_step_s_samples5"] / results["jax_step_s_samples1"]
  )
  print(f"jax: num_samples=5 costs {results['samples5_over_samples1']:.2f}x num_samples=1")
  if not args.skip_eval:
    bank = rng.random((55000, 28, 28, 1), dtype=np.float32)
    bank_labels = rng.integers(0, 10, 55000).astype(np.int32)
    queries = rng.random((10000, 28, 28, 1), dtype=np.float32)
    query_labels = rng.integers(0, 10, 10000).astype(np.int32)
    state = sharding.replicate(
      training.create_train_state(jax.random.key(0), config, (28, 28, 1), 550), mesh
    )
    run = lambda: training.evaluate(
      state, bank, bank_labels, queries, query_labels, k=9, num_classes=10, mesh=mesh
    )
    results["eval_s"] = median_time(run, repeats=3, warmup=1)
    print(f"evaluation: embed 55,000 + classify 10,000 by 9-NN: {results['eval_s']:.2f} s")
  write_results(args.out, results)


if __name__ == "__main__":
  main()
