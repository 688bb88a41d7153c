"""Named configurations of the dKNN example; every default is written here only.

`TrainConfig()` is the reference protocol (ermongroup/subsets `knn/run_dknn.py`) on MNIST;
`CONFIGS` maps the names that `train_mnist.py --config` accepts to their configurations.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of a run; the defaults are the reference protocol on MNIST."""

  # Besides the harness's (epochs, time budget, ...): the vote ks tried after training.
  extra_resumable_fields: ClassVar[frozenset[str]] = frozenset({"eval_k_grid"})

  dataset: str = "mnist"  # "mnist", "fashion_mnist" or "digits"
  data_dir: str | None = None  # a directory with the four IDX files; None: the default routes
  k: int = 9  # neighbours in the loss and in the kNN vote
  eval_k: int | None = None  # neighbours in the evaluation's kNN vote; None: k
  # After training, the best checkpoint's validation accuracy chooses the test's vote k among
  # these; (): the test votes with eval_k.
  eval_k_grid: tuple[int, ...] = ()
  tau: float = 1.0  # relaxation temperature
  num_samples: int = 1  # Gumbel draws averaged per step (vmapped)
  estimator: str = "relaxed"  # one of sj.ESTIMATORS (sj.dknn_loss)
  lam: float = 10.0  # I-MLE's lambda (estimator "imle"): the step to its target distribution
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"  # "constant" or "cosine" (to 0 over num_epochs)
  momentum: float = 0.9
  augment_shift: int = 0  # training images translated by up to this many pixels; 0: none
  weight_decay: float = 5e-4  # coupled, added to the gradient before momentum (as PyTorch)
  num_epochs: int = 20
  num_queries: int = 100  # queries per step
  num_neighbors: int = 100  # candidate neighbours per step
  validation_size: int | None = None  # None: 1/12 of the training set (5,000 of 60,000)
  split_seed: int = 0  # the train / validation split
  seed: int = 0  # initialisation, data order and Gumbel noise
  max_train_examples: int | None = None  # train on a subset (smoke runs)
  max_test_examples: int | None = None  # test on a subset
  time_budget_s: float | None = 20 * 60  # stop training once exceeded, then evaluate
  eval_batch_size: int = 1000
  checkpoint_every_steps: int | None = 500  # and at every epoch end; None: epoch ends only
  num_devices: int | None = None  # None: all visible devices that divide the batch sizes
  progress: bool = True


def reference() -> TrainConfig:
  """The reference protocol: MNIST, k = 9, tau = 1, SGD 1e-3, 20 epochs in at most 20 min."""
  return TrainConfig()


def long() -> TrainConfig:
  """A longer MNIST run: 40 epochs, learning rate 3e-3 with cosine decay, 5 draws per step."""
  return dataclasses.replace(
    TrainConfig(),
    num_epochs=40,
    learning_rate=3e-3,
    lr_schedule="cosine",
    num_samples=5,
    time_budget_s=None,
  )


def digits() -> TrainConfig:
  """A smoke run of seconds on scikit-learn's 8 x 8 digits."""
  return dataclasses.replace(
    TrainConfig(),
    dataset="digits",
    num_queries=50,
    num_neighbors=50,
    num_epochs=3,
    validation_size=150,
    time_budget_s=None,
  )


CONFIGS = {"reference": reference, "long": long, "digits": digits}
