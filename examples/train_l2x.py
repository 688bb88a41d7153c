"""Learning to explain (L2X) on its synthetic data sets with any k-subset estimator.

An explainer network scores the 10 features of each row and selects k of them through
`sj.expectation` with the chosen estimator; an approximator predicts the label from the
selected features alone. The explanation set's metrics: the mean over rows of the median
rank of the row's relevant features in the explainer's ranking (optimum (k + 1) / 2), and the
approximator's post-hoc accuracy on the top-k features. This script only parses flags; the
work is `l2x.train.train_and_evaluate`, the configuration `l2x/configs.py`.

  python examples/train_l2x.py --dataset xor --estimator simple
  python examples/train_l2x.py --dataset switch --estimator imle --seed 3
  python examples/train_l2x.py --resume --workdir runs/l2x/xor/l2x/seed0

Ctrl-C (or SIGTERM) finishes the current step, saves, and exits with 130 (143); --resume
continues bit for bit. Metrics go to <workdir>/metrics.jsonl and TensorBoard events to
<workdir>/tensorboard.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness import flags
from l2x import configs

EXIT_DIVERGED = 3  # the training loss became non-finite; the final record says where


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog="Exit status: 0 done; 2 a resume with a changed field; "
    f"{EXIT_DIVERGED} the training loss became non-finite; 130 or 143 interrupted by SIGINT "
    "or SIGTERM (continue with --resume).",
  )
  flags.add_config_flags(p, configs.TrainConfig, configs.TrainConfig())
  p.add_argument(
    "--workdir", default=None, help="metrics and checkpoints (default: runs/l2x/<dataset>)"
  )
  p.add_argument(
    "--resume", action="store_true", help="continue the run in --workdir from its checkpoint"
  )
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  config = flags.config_from_flags(args, configs.TrainConfig())
  from harness import checkpoints, stopping
  from l2x import train

  workdir = args.workdir or f"runs/l2x/{config.dataset}"
  try:
    summary = train.train_and_evaluate(config, workdir, resume=args.resume)
  except stopping.TrainingInterrupted as stop:
    print(stop, file=sys.stderr)
    return stop.exit_code
  except checkpoints.ConfigMismatchError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  fields = ("median_rank", "posthoc_accuracy", "train_time_s", "diverged_at_step")
  print(json.dumps({name: summary.get(name) for name in fields}))
  return 0 if summary["diverged_at_step"] is None else EXIT_DIVERGED


if __name__ == "__main__":
  sys.exit(main())
