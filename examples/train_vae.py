"""A discrete VAE on MNIST with k-subset latents, trained with any k-subset estimator.

The protocol of the SIMPLE authors' DVAE notebook: MNIST in [0, 1] (not binarised), an
encoder 784-512-256-400 whose 400 logits are 20 latent variables of 20 items, each a
10-subset, a decoder 400-256-512-784, batch 100, Adam at 5e-4, 135 epochs; the loss per
image is the summed binary cross-entropy plus the KL divergence to the uniform prior over
10-subsets (exact for the exactly-k family; the exact log-probability of the sampled set for
the Gumbel-top-k family). This script only parses flags; the work is
`vae.train.train_and_evaluate`, the configuration `vae/configs.py`.

  python examples/train_vae.py                                  # SIMPLE, 135 epochs
  python examples/train_vae.py --estimator imle --seed 1
  python examples/train_vae.py --estimator score_function --family gumbel_topk
  python examples/train_vae.py --resume --workdir runs/vae/simple

Ctrl-C (or SIGTERM) finishes the current step, saves, and exits with 130 (143); --resume
continues bit for bit. Metrics go to <workdir>/metrics.jsonl and TensorBoard events to
<workdir>/tensorboard.
"""

from __future__ import annotations

import sys

from harness import cli
from vae import configs


def _train():
  from vae import train

  return train.train_and_evaluate


def _input_errors():
  from harness import image_data

  return (image_data.DataUnavailableError, ValueError)


def main(argv=None) -> int:
  return cli.main(
    argv,
    __doc__,
    configs.TrainConfig,
    train_and_evaluate=_train,
    default_workdir=lambda config: f"runs/vae/{config.estimator}",
    workdir_help="metrics and checkpoints (default: runs/vae/<estimator>)",
    fields=(
      *("test_loss", "test_notebook_loss", "test_kl", "test_loss_mc_se"),
      *("best_epoch", "train_time_s", "diverged_at_step"),
    ),
    input_errors=_input_errors,
  )


if __name__ == "__main__":
  sys.exit(main())
