"""VAE train-step benchmark: the example's jitted train step for every estimator.

  python -m benchmarks.bench_vae_step [--repeats 30] [--rounds 1] [--baseline DIR]
                                      [--variants NAME ...] [--out FILE]

The DVAE notebook's sizes: a batch of 100 MNIST-sized random images, 20 latent variables of
10-of-20 subsets, the encoder 784-512-256-400 and decoder 400-256-512-784, Adam; each
variant of the sweep `benchmarks.vae_results` (every estimator, and SIMPLE on the notebook's
KL) at the example's defaults (tau = 1, lambda = 10, 1 draw, 2 for the score function, 2
draws of the Gumbel-top-k family's KL). The row "model" is the encoder and decoder alone
(sigmoid codes, no subset), the floor under every estimator. Each checkout (this one and,
with `--baseline DIR`, another: its `subsets_jax` and `examples/vae`) runs in its own
worker process, the checkouts alternating over `--rounds`; the table gives the median step
time over all rounds, the time of a 600-step epoch, and the ratio baseline / current.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys

from benchmarks.common import (
  REPO,
  call_times,
  load_library,
  machine,
  median_row,
  run_checkouts,
  write_results,
)


def worker(args) -> None:
  """Times every variant's train step with the checkout under `--library`; prints JSON."""
  root = pathlib.Path(args.library)
  load_library(root)
  sys.path.insert(0, str(root / "examples"))
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vae import configs, data, train

  pixels = np.random.default_rng(0).random((100, 784), dtype=np.float32)
  splits = data.Splits(train=pixels, val=pixels, test=pixels, source="random images")
  images = jnp.asarray(pixels)
  key = jax.random.key(0)

  rows = []
  for variant, fields in json.loads(args.variant_fields).items():
    config = configs.TrainConfig(**fields)
    task_static = train.VAETask(config, splits).static
    state = train.create_train_state(key, config)
    step = functools.partial(train.train_step, config_static=task_static)
    times = call_times(
      lambda step=step: step(state, images, key, config.tau, config.lam)[1], args.repeats
    )
    rows.append({"variant": variant, "times_s": times})

  config = configs.TrainConfig()
  state = train.create_train_state(key, config)

  @jax.jit
  def model_step(state):
    def loss(params):
      def one(x):
        logits = train._encode(params["encoder"], x, config.latent_groups, config.latent_items)
        return train._reconstruction(params["decoder"], jax.nn.sigmoid(logits), x)

      return jax.vmap(one)(images).mean()

    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(grads=grads), value

  rows.append(
    {"variant": "model", "times_s": call_times(lambda: model_step(state)[1], args.repeats)}
  )
  json.dump(rows, sys.stdout)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=30, help="timed steps per variant and round")
  p.add_argument("--baseline", default=None, help="another checkout to compare")
  p.add_argument("--rounds", type=int, default=1, help="alternating rounds of worker processes")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument(
    "--variants", nargs="+", default=None, help="sweep variants to time (default: all)"
  )
  p.add_argument("--variant_fields", default="{}", help=argparse.SUPPRESS)
  p.add_argument("--library", default=str(REPO), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args)
    return
  # The sweep's variants, by name; the workers may load another checkout's example.
  from benchmarks.vae_results import VARIANTS

  unknown = set(args.variants or ()) - set(VARIANTS)
  if unknown:
    p.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
  chosen = {name: VARIANTS[name] for name in args.variants or VARIANTS}
  flags = ["--repeats", str(args.repeats), "--variant_fields", json.dumps(chosen)]
  runs = run_checkouts("benchmarks.bench_vae_step", flags, args.baseline, args.rounds)
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  header = f"{'variant':>28} | {'step (ms)':>9} {'epoch (s)':>9}"
  if args.baseline:
    header += f" | {'baseline':>9} {'base/cur':>8}"
  print(header)
  rows = []
  for i, first in enumerate(runs["current"][0]):
    row = {"variant": first["variant"], **median_row(runs, i)}
    line = f"{row['variant']:>28} | {1e3 * row['time_s']:9.1f} {600 * row['time_s']:9.1f}"
    if args.baseline:
      line += f" | {1e3 * row['baseline_time_s']:9.1f} {row['baseline_over_current']:8.2f}"
    rows.append(row)
    print(line, flush=True)
  write_results(args.out, {"machine": info, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
  main()
