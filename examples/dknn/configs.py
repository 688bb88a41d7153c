"""Named configurations of the dKNN example; every default is written here only.

`TrainConfig()` is the reference protocol (ermongroup/subsets `knn/run_dknn.py`) on MNIST;
`CONFIGS` maps the names that `train_mnist.py --config` accepts to their configurations.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from harness import image_data

import subsets_jax as sj

from .models import MODELS


def _field(default, text: str, choices=None, **metadata):
  return dataclasses.field(default=default, metadata={"help": text, "choices": choices, **metadata})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of a run; the defaults are the reference protocol on MNIST."""

  # Besides the harness's (epochs, time budget, ...): the vote ks tried after training.
  extra_resumable_fields: ClassVar[frozenset[str]] = frozenset({"eval_k_grid"})

  dataset: str = _field("mnist", "dataset", image_data.DATASETS)
  data_dir: str | None = _field(
    None,
    "directory with the four IDX files (gzip or raw); default: $SUBSETS_JAX_DATA, the "
    "repository's data/, Debian's fashion-mnist path, then tensorflow-datasets",
  )
  model: str = _field(
    "convnet",
    "embedding network: convnet (the reference's), vgg (four 3x3 convolutions, larger) or "
    "vgg_norm (vgg with group and layer normalisation)",
    tuple(MODELS),
  )
  k: int = _field(9, "neighbours in the loss and in the kNN vote")
  eval_k: int | None = _field(None, "neighbours in the evaluation's kNN vote (None: k)")
  eval_k_grid: tuple[int, ...] = _field(
    (),
    "after training, choose the test's vote k among these by the best checkpoint's "
    "validation accuracy",
  )
  tau: float = _field(1.0, "relaxation temperature")
  num_samples: int = _field(1, "draws averaged per step (vmapped)")
  estimator: str = _field(
    "relaxed",
    "gradient estimator of the loss (sj.dknn_loss); score_function needs --num_samples >= 2",
    sj.ESTIMATORS,
  )
  lam: float = _field(10.0, "I-MLE's lambda, for --estimator imle")
  learning_rate: float = _field(1e-3, "SGD learning rate", flag="lr")
  lr_schedule: str = _field(
    "constant", "constant, or cosine decay to 0 over the epochs", ("constant", "cosine")
  )
  momentum: float = _field(0.9, "SGD momentum")
  augment_shift: int = _field(0, "translate training images by up to this many pixels")
  # Coupled, added to the gradient before momentum (as PyTorch's SGD).
  weight_decay: float = _field(5e-4, "weight decay")
  num_epochs: int = _field(20, "training epochs", flag="epochs")
  num_queries: int = _field(100, "queries per step", flag="queries")
  num_neighbors: int = _field(100, "candidate neighbours per step", flag="neighbors")
  validation_size: int | None = _field(
    None, "validation images held out of the training set (None: 1/12 of it)"
  )
  split_seed: int = _field(0, "the train / validation split")
  seed: int = _field(0, "initialisation, data order and noise")
  max_train_examples: int | None = _field(None, "train on a subset")
  max_test_examples: int | None = _field(None, "test on a subset")
  # Stop training once exceeded, then evaluate; the script's flag is --time_budget_min.
  time_budget_s: float | None = _field(20 * 60, "", flag=None)
  eval_batch_size: int = _field(1000, "images per evaluation batch")
  checkpoint_every_steps: int | None = _field(
    500,
    "save the latest state every this many steps, as well as at every epoch end",
    flag="checkpoint_every",
  )
  num_devices: int | None = _field(
    None, "devices of the data-parallel mesh (None: all that divide the batch sizes)"
  )
  progress: bool = _field(True, "", flag=None)  # the script's flag is --no_progress


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
