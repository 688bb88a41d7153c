"""Train-step benchmark: the example's jitted dKNN train step against the reference PyTorch
step, and the evaluation time.

  python -m benchmarks.bench_train_step [--steps 30] [--host_devices 1] [--no_torch]
                                        [--torch_device cpu|cuda] [--out FILE]

Both steps: 100 queries + 100 candidate neighbours (MNIST-sized random images), the
reference ConvNet, k = 9, tau = 1, SGD with momentum 0.9 and weight decay 5e-4. Prints the
median step times (interleaved), their ratio, and the evaluation time (embed 55,000 images
and classify 10,000 queries by 9-NN; median of 3 after a warm-up run).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

# The example's own modules (examples/dknn), as its script imports them.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))


def synthetic_batch(size: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  images = rng.random((2 * size, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 10, 2 * size).astype(np.int32)
  return {
    "query_images": images[:size],
    "query_labels": labels[:size],
    "neighbor_images": images[size:],
    "neighbor_labels": labels[size:],
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=30, help="timed steps per contender")
  p.add_argument("--host_devices", type=int, default=1, help="JAX CPU devices (data parallel)")
  p.add_argument("--no_torch", action="store_true", help="leave the PyTorch reference out")
  p.add_argument("--torch_device", default="cpu", help="cpu, or cuda on a GPU machine")
  p.add_argument("--skip_eval", action="store_true", help="do not time the evaluation")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()

  from dknn import parallel

  parallel.set_host_devices(args.host_devices)
  import jax
  import jax.numpy as jnp
  from dknn import configs, train

  from benchmarks.common import machine, median_times, torch_sync, write_results

  mesh = parallel.data_mesh(args.host_devices, divides=(100,))
  host_batch = synthetic_batch()
  batch = parallel.shard_batch(host_batch, mesh)
  config = configs.reference()
  results = {"machine": machine(), "jax_devices": mesh.size}

  def jax_step(num_samples):
    state = train.create_train_state(jax.random.key(0), config, (28, 28, 1), 550)
    holder = {"state": parallel.replicate(state, mesh), "i": 0}

    def step():
      holder["i"] += 1
      holder["state"], metrics = train.train_step_jit(
        holder["state"],
        batch,
        jax.random.key(holder["i"]),
        jnp.float32(1.0),
        k=9,
        num_samples=num_samples,
        separate_passes=train.prefers_separate_passes(mesh),
      )
      jax.block_until_ready(metrics)

    return step

  steps = {f"jax_samples{s}": jax_step(s) for s in (1, 5)}
  if not args.no_torch:
    import torch

    from benchmarks import torch_reference

    torch.manual_seed(0)
    dev = args.torch_device
    results["torch"] = f"{torch.__version__} on {dev}"
    sync = torch_sync(dev)
    qx, nx = (
      torch.from_numpy(host_batch[f"{n}_images"].transpose(0, 3, 1, 2).copy()).to(dev)
      for n in ("query", "neighbor")
    )
    qy, ny = (
      torch.from_numpy(host_batch[f"{n}_labels"].astype(np.int64)).to(dev)
      for n in ("query", "neighbor")
    )
    for s in (1, 5):
      step = torch_reference.make_train_step(device=dev)
      steps[f"torch_samples{s}"] = lambda step=step, s=s: (step(qx, qy, nx, ny, s), sync())
  results.update(median_times(steps, args.steps, warmup=3))
  info = results["machine"]
  print(f"{info['cpu']}; {info['device']} x {mesh.size}; JAX {info['jax']}; {info['date']}")
  for s in (1, 5):
    ours = results[f"jax_samples{s}"]
    line = f"num_samples={s}: JAX {ours * 1e3:.1f} ms"
    if f"torch_samples{s}" in results:
      theirs = results[f"torch_samples{s}"]
      results[f"jax_over_torch_samples{s}"] = ours / theirs
      line += f", PyTorch {theirs * 1e3:.1f} ms, JAX / PyTorch time {ours / theirs:.2f}"
    print(line)
  if not args.skip_eval:
    rng = np.random.default_rng(1)
    bank = rng.random((55000, 28, 28, 1), dtype=np.float32)
    bank_labels = rng.integers(0, 10, 55000).astype(np.int32)
    queries = rng.random((10000, 28, 28, 1), dtype=np.float32)
    query_labels = rng.integers(0, 10, 10000).astype(np.int32)
    state = train.create_train_state(jax.random.key(0), config, (28, 28, 1), 550)
    state = parallel.replicate(state, mesh)
    run = lambda: train.evaluate(
      state, bank, bank_labels, queries, query_labels, k=9, num_classes=10, mesh=mesh
    )
    run()
    times = []
    for _ in range(3):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    results["eval_s"] = sorted(times)[1]
    print(f"evaluation (embed 55,000, classify 10,000 by 9-NN): {results['eval_s']:.2f} s")
  write_results(args.out, results)


if __name__ == "__main__":
  main()
