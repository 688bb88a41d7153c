"""Train a ConvNet embedding with the differentiable kNN loss and report kNN test accuracy.

Runs offline with no arguments on the vendored MNIST files. This script only parses flags;
the work is `dknn.train.train_and_evaluate` beside it, the configurations are in
`dknn/configs.py`.

  python examples/train_mnist.py                          # MNIST, reference protocol
  python examples/train_mnist.py --config long            # 40 epochs, cosine, 5 draws
  python examples/train_mnist.py --config digits          # seconds, scikit-learn digits
  python examples/train_mnist.py --dataset fashion_mnist  # Debian's dataset-fashion-mnist
  python examples/train_mnist.py --resume                 # continue an interrupted run

Ctrl-C (or SIGTERM) finishes the current step, saves, and exits with 130 (143); a second
Ctrl-C exits at once. A non-finite training loss stops the run, which still evaluates its
best-validation checkpoint and exits with 3. Metrics go to <workdir>/metrics.jsonl and
TensorBoard events to <workdir>/tensorboard (to view them: pip install tensorboard;
tensorboard --logdir runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dknn import configs, parallel
from harness import cli, flags, image_data


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="Every flag defaults to the chosen --config's value (dknn/configs.py); the help "
    f"shows the reference configuration's. {cli.EPILOG}",
  )
  p.add_argument(
    "--config",
    choices=sorted(configs.CONFIGS),
    default="reference",
    help="named configuration that the other flags override (default: reference)",
  )
  flags.add_config_flags(p, configs.TrainConfig, configs.reference())
  p.add_argument(
    "--workdir", default=None, help="metrics and checkpoints go here (default: runs/<dataset>)"
  )
  p.add_argument(
    "--resume",
    action="store_true",
    help="continue the run in workdir from its latest checkpoint (its configuration must match "
    "except for epochs, time budget, progress and device count); without it a new run "
    "replaces workdir's",
  )
  p.add_argument(
    "--time_budget_min",
    type=float,
    default=None,
    help="stop training after this many minutes, then evaluate; 0: no limit "
    "(default: the config's, 20 for reference)",
  )
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  p.add_argument(
    "--host_devices",
    type=int,
    default=None,
    help="split the CPU into this many JAX devices and train data-parallel across them "
    "(default: one per core, at most 8; 1 with --multihost); inert on GPU and TPU",
  )
  p.add_argument(
    "--multihost",
    action="store_true",
    help="call jax.distributed.initialize() first (auto-detected on SLURM, Cloud TPU and "
    "GKE; elsewhere give the three flags below)",
  )
  p.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  p.add_argument("--num_processes", type=int, default=None, help="number of processes")
  p.add_argument("--process_id", type=int, default=None, help="this process's id")
  return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> configs.TrainConfig:
  """The named config with every flag that was given applied to it."""
  config = flags.config_from_flags(args, configs.CONFIGS[args.config]())
  changes = {}
  if args.time_budget_min is not None:
    changes["time_budget_s"] = args.time_budget_min * 60 or None
  if args.no_progress:
    changes["progress"] = False
  return dataclasses.replace(config, **changes)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.host_devices is None:
    args.host_devices = 1 if args.multihost else parallel.default_host_devices()
  # Before the first JAX operation: the CPU backend reads it when it starts.
  parallel.set_host_devices(args.host_devices)
  if args.multihost:
    import jax

    jax.distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  from dknn import train

  config = make_config(args)
  return cli.run(
    train.train_and_evaluate,
    config,
    args.workdir or f"runs/{config.dataset}",
    resume=args.resume,
    fields=(
      *("test_accuracy", "best_val_accuracy", "best_epoch"),
      *("train_time_s", "wall_time_s", "diverged_at_step"),
    ),
    input_errors=(image_data.DataUnavailableError,),
  )


if __name__ == "__main__":
  sys.exit(main())
