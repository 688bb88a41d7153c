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

import sys

from harness import cli
from l2x import configs


def _train():
  from l2x import train

  return train.train_and_evaluate


def main(argv=None) -> int:
  return cli.main(
    argv,
    __doc__,
    configs.TrainConfig,
    train_and_evaluate=_train,
    default_workdir=lambda config: f"runs/l2x/{config.dataset}",
    workdir_help="metrics and checkpoints (default: runs/l2x/<dataset>)",
    fields=("median_rank", "posthoc_accuracy", "train_time_s", "diverged_at_step"),
  )


if __name__ == "__main__":
  sys.exit(main())
