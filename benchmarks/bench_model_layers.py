"""The dKNN embedding nets' CPU-friendly layers against Flax's stock ones: train-step time.

  python -m benchmarks.bench_model_layers [--model convnet|vgg] [--steps 30] [--batch 200]

`ConvNet(cpu_layers=True)` and `VGGNet(cpu_layers=True)` compute their first convolution as
patches x matrix and their pooling as a reshape and a max; `cpu_layers=False` uses `nn.Conv`
and `nn.max_pool`. Both compute the same function. Times one jitted SGD step on the dKNN
loss (queries and neighbours of MNIST size), the two variants interleaved; prints the
medians and their ratio.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import subsets_jax as sj
from benchmarks.common import machine, write_results

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

from dknn.models import MODELS


def make_step(model):
  @jax.jit
  def step(params, images, labels, key):
    def loss(params):
      emb = model.apply({"params": params}, images)
      half = images.shape[0] // 2
      return sj.dknn_loss(key, emb[:half], emb[half:], labels[:half], labels[half:], k=9, tau=1.0)

    value, grads = jax.value_and_grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

  return step


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="convnet", choices=MODELS, help="the embedding net")
  p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
  p.add_argument("--batch", type=int, default=200, help="queries + neighbours per step")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((args.batch, 28, 28, 1), dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
  key = jax.random.key(0)
  variants = {}
  for cpu_layers in (True, False):
    model = MODELS[args.model](cpu_layers=cpu_layers)
    params = model.init(jax.random.key(1), images[:1])["params"]
    step = make_step(model)
    jax.block_until_ready(step(params, images, labels, key))
    variants[cpu_layers] = (step, params, [])
  for _ in range(args.steps):  # interleaved, so that both see the same machine state
    for step, params, times in variants.values():
      start = time.perf_counter()
      jax.block_until_ready(step(params, images, labels, key))
      times.append(time.perf_counter() - start)
  medians = {name: statistics.median(v[2]) for name, v in variants.items()}
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}; {args.model}")
  print(f"cpu_layers=True : {1e3 * medians[True]:.1f} ms per step")
  print(f"cpu_layers=False: {1e3 * medians[False]:.1f} ms per step")
  print(f"stock / cpu_layers: {medians[False] / medians[True]:.2f}x")
  write_results(
    args.out,
    {"machine": info, "model": args.model, "ms": {str(k): 1e3 * v for k, v in medians.items()}},
  )


if __name__ == "__main__":
  main()
