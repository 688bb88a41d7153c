"""Train a ConvNet embedding with the differentiable kNN loss and report kNN test accuracy.

Runs offline with no arguments on the vendored MNIST files. Only parses flags: the work is
`subsets_jax.dknn_training.train_and_evaluate`.

  python examples/train_mnist.py                          # MNIST, reference protocol
  python examples/train_mnist.py --dataset fashion_mnist  # Debian's dataset-fashion-mnist
  python examples/train_mnist.py --dataset digits --epochs 5 --queries 50 --neighbors 50
  python examples/train_mnist.py --resume                 # continue an interrupted run
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from subsets_jax import datasets
from subsets_jax._src import malloc_env, sharding
from subsets_jax.dknn_training import TrainConfig, train_and_evaluate


def parse_args(argv=None) -> argparse.Namespace:
  defaults = TrainConfig()
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument("--dataset", choices=datasets.DATASETS, default=defaults.dataset)
  p.add_argument(
    "--data_dir",
    default=None,
    help="directory with the four IDX files (gzip or raw); default: the "
    "repository's data/, $SUBSETS_JAX_DATA, Debian's path, then TFDS",
  )
  p.add_argument("--k", type=int, default=defaults.k, help="neighbours in the loss and the vote")
  p.add_argument("--tau", type=float, default=defaults.tau, help="relaxation temperature")
  p.add_argument(
    "--num_samples",
    type=int,
    default=defaults.num_samples,
    help="Gumbel draws averaged per step (vmapped)",
  )
  p.add_argument("--hard", action="store_true", help="straight-through exact k-hot forward")
  p.add_argument(
    "--implementation",
    choices=("xla", "cpu_kernel"),
    default=defaults.implementation,
    help="relaxed top-k: pure JAX, or the fused C++ kernel on CPU (compiled on first use)",
  )
  p.add_argument("--lr", type=float, default=defaults.learning_rate, help="SGD learning rate")
  p.add_argument("--lr_schedule", choices=("constant", "cosine"), default=defaults.lr_schedule)
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--queries", type=int, default=defaults.num_queries, help="queries per step")
  p.add_argument(
    "--neighbors", type=int, default=defaults.num_neighbors, help="candidate neighbours per step"
  )
  p.add_argument(
    "--validation_size",
    type=int,
    default=None,
    help="validation images held out of the training set (default 1/12)",
  )
  p.add_argument("--max_train_examples", type=int, default=None, help="train on a subset")
  p.add_argument("--max_test_examples", type=int, default=None, help="test on a subset")
  p.add_argument("--seed", type=int, default=defaults.seed)
  p.add_argument("--workdir", default="runs/mnist", help="metrics and checkpoints go here")
  p.add_argument("--resume", action="store_true", help="continue from workdir's latest checkpoint")
  p.add_argument(
    "--time_budget_min",
    type=float,
    default=20.0,
    help="stop training after this many minutes (0: no limit), then evaluate",
  )
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  p.add_argument(
    "--host_devices",
    type=int,
    default=None,
    help="split the CPU into this many JAX devices and train data-parallel across them "
    "(restarts the script with XLA_FLAGS set). Default: one per CPU core, at most 8 (1 with "
    "--multihost). Inert where a GPU or TPU is the default backend",
  )
  p.add_argument(
    "--default_malloc",
    action="store_true",
    help="keep glibc's malloc defaults; otherwise the script restarts itself with "
    "MALLOC_TOP_PAD_, MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set (with the "
    "defaults a one-device CPU train step page-faulted its buffers in afresh: 37-40 vs "
    "26-30 ms on a 2-core CPU)",
  )
  p.add_argument(
    "--multihost",
    action="store_true",
    help="call jax.distributed.initialize() first (auto-detected on SLURM/TPU/GKE, else give "
    "the three flags below)",
  )
  p.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  return p.parse_args(argv)


def restart_env(args: argparse.Namespace) -> dict[str, str]:
  """Environment variables the script restarts itself with (glibc reads them at start)."""
  return {} if args.default_malloc else dict(malloc_env.KEEP_FREED_MEMORY)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.host_devices is None:
    args.host_devices = 1 if args.multihost else sharding.default_host_devices()
  env = restart_env(args)
  if argv is None:
    sharding.reexec_with_host_devices(args.host_devices, sys.argv, env)
  settings = [f"{name}={os.environ[name]}" for name in env if name in os.environ]
  if settings:
    print("glibc malloc: " + " ".join(settings))
  if args.multihost:
    import jax

    jax.distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  config = TrainConfig(
    dataset=args.dataset,
    data_dir=args.data_dir,
    k=args.k,
    tau=args.tau,
    num_samples=args.num_samples,
    hard=args.hard,
    implementation=args.implementation,
    learning_rate=args.lr,
    lr_schedule=args.lr_schedule,
    num_epochs=args.epochs,
    num_queries=args.queries,
    num_neighbors=args.neighbors,
    validation_size=args.validation_size,
    max_train_examples=args.max_train_examples,
    max_test_examples=args.max_test_examples,
    seed=args.seed,
    time_budget_s=args.time_budget_min * 60 or None,
    progress=not args.no_progress,
  )
  try:
    summary = train_and_evaluate(config, args.workdir, resume=args.resume)
  except datasets.DataUnavailableError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(
    json.dumps(
      {
        k: summary[k]
        for k in ("test_accuracy", "best_val_accuracy", "best_epoch", "train_time_s", "wall_time_s")
      }
    )
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
