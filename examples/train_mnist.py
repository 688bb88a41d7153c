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
import json
import sys

from dknn import configs, parallel
from harness import image_data

import subsets_jax as sj

EXIT_DIVERGED = 3  # the training loss became non-finite; the final record says where

# Flag name -> (config field, help). Each flag's default is the chosen config's value.
_OVERRIDES = {
  "dataset": ("dataset", "dataset: mnist, fashion_mnist or digits"),
  "data_dir": (
    "data_dir",
    "directory with the four IDX files (gzip or raw); default: $SUBSETS_JAX_DATA, the "
    "repository's data/, Debian's fashion-mnist path, then tensorflow-datasets",
  ),
  "k": ("k", "neighbours in the loss and in the kNN vote"),
  "eval_k": ("eval_k", "neighbours in the evaluation's kNN vote (default: --k)"),
  "eval_k_grid": (
    "eval_k_grid",
    "after training, choose the test's vote k among these by the best checkpoint's "
    "validation accuracy",
  ),
  "augment_shift": ("augment_shift", "translate training images by up to this many pixels"),
  "tau": ("tau", "relaxation temperature"),
  "num_samples": ("num_samples", "draws averaged per step (vmapped)"),
  "estimator": (
    "estimator",
    "gradient estimator of the loss (sj.dknn_loss); score_function needs --num_samples >= 2",
  ),
  "lam": ("lam", "I-MLE's lambda, for --estimator imle"),
  "lr": ("learning_rate", "SGD learning rate"),
  "lr_schedule": ("lr_schedule", "constant, or cosine decay to 0 over the epochs"),
  "epochs": ("num_epochs", "training epochs"),
  "queries": ("num_queries", "queries per step"),
  "neighbors": ("num_neighbors", "candidate neighbours per step"),
  "validation_size": ("validation_size", "validation images held out of the training set"),
  "max_train_examples": ("max_train_examples", "train on a subset"),
  "max_test_examples": ("max_test_examples", "test on a subset"),
  "seed": ("seed", "initialisation, data order and noise"),
  "checkpoint_every": (
    "checkpoint_every_steps",
    "save the latest state every this many steps, as well as at every epoch end",
  ),
}
_TYPES = {
  "data_dir": str,
  "dataset": str,
  "estimator": str,
  "lr_schedule": str,
  "tau": float,
  "lam": float,
  "lr": float,
}
_LISTS = ("eval_k_grid",)  # flags that take several values (a tuple field)
_CHOICES = {
  "dataset": image_data.DATASETS,
  "estimator": sj.ESTIMATORS,
  "lr_schedule": ("constant", "cosine"),
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="Every flag defaults to the chosen --config's value (dknn/configs.py); the help "
    "shows the reference configuration's. Exit status: 0 done; 2 no data, or a resume with a "
    f"changed field; {EXIT_DIVERGED} the training loss became non-finite (the run diverged); "
    "130 or 143 interrupted by SIGINT or SIGTERM (continue with --resume).",
  )
  p.add_argument(
    "--config",
    choices=sorted(configs.CONFIGS),
    default="reference",
    help="named configuration that the other flags override (default: reference)",
  )
  for flag, (field, text) in _OVERRIDES.items():
    p.add_argument(
      f"--{flag}",
      type=_TYPES.get(flag, int),
      choices=_CHOICES.get(flag),
      nargs="+" if flag in _LISTS else None,
      default=None,
      help=f"{text} (reference: {getattr(configs.reference(), field)})",
    )
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
  config = configs.CONFIGS[args.config]()
  changes = {
    field: tuple(getattr(args, flag)) if flag in _LISTS else getattr(args, flag)
    for flag, (field, _) in _OVERRIDES.items()
    if getattr(args, flag) is not None
  }
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
  from harness import checkpoints, stopping

  config = make_config(args)
  workdir = args.workdir or f"runs/{config.dataset}"
  try:
    summary = train.train_and_evaluate(config, workdir, resume=args.resume)
  except stopping.TrainingInterrupted as stop:
    print(stop, file=sys.stderr)
    return stop.exit_code
  except (image_data.DataUnavailableError, checkpoints.ConfigMismatchError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  fields = (
    "test_accuracy",
    "best_val_accuracy",
    "best_epoch",
    "train_time_s",
    "wall_time_s",
    "diverged_at_step",
  )
  print(json.dumps({name: summary[name] for name in fields}))
  return 0 if summary["diverged_at_step"] is None else EXIT_DIVERGED


if __name__ == "__main__":
  sys.exit(main())
