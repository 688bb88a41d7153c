"""The configuration of a discrete-VAE run; every default is written here only."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import subsets_jax as sj

EXACTLY_K_ESTIMATORS = ("simple", "imle")  # with score_function and family "exactly_k"


def _field(default, text: str, choices=None):
  return dataclasses.field(default=default, metadata={"help": text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of a run; the defaults are the SIMPLE authors' DVAE notebook's."""

  estimator: str = _field("simple", "gradient estimator of the latent subsets", sj.ESTIMATORS)
  family: str | None = _field(None, "distribution of score_function (None: exactly_k)", sj.FAMILIES)
  latent_groups: int = _field(20, "latent variables per image")
  latent_items: int = _field(20, "items per latent variable")
  k: int = _field(10, "items chosen in each latent variable")
  kl: str = _field(
    "exact",
    "the KL term: exact, or notebook (the DVAE notebook's, which omits the first 9 items' "
    "conditional entropy; exactly-k family only)",
    ("exact", "notebook"),
  )
  tau: float = _field(1.0, "temperature of relaxed, straight_through and l2x")
  lam: float = _field(10.0, "I-MLE's lambda")
  num_samples: int | None = _field(None, "draws per image and step; None: 1 (2 for score_function)")
  kl_samples: int = _field(
    2, "draws of the score-function estimate of the Gumbel-top-k family's KL (>= 2)"
  )
  learning_rate: float = _field(5e-4, "Adam learning rate")
  batch_size: int = _field(100, "images per step")
  num_epochs: int = _field(135, "epochs over the training images")
  train_size: int | None = _field(None, "training images (None: all 60,000)")
  test_size: int | None = _field(None, "test images (None: all 10,000)")
  val_size: int = _field(
    0, "training images held out for model selection (0: select on the test set, as the notebook)"
  )
  eval_draws: int = _field(1, "latent draws per image at each epoch's evaluation")
  test_draws: int = _field(10, "latent draws per image in the final test of the best state")
  seed: int = _field(0, "initialisation, batch order and noise")
  eval_batch_size: int = _field(1000, "images per evaluation batch")
  data_dir: str | None = _field(None, "directory of MNIST's IDX files (default: the usual routes)")
  time_budget_s: float | None = _field(None, "stop training after this many seconds")
  checkpoint_every_steps: int | None = _field(300, "save the latest state this often")
  progress: bool = _field(True, "a progress bar on a terminal")

  extra_resumable_fields: ClassVar[frozenset[str]] = frozenset({"test_draws", "data_dir"})

  @property
  def draws(self) -> int:
    return self.num_samples or (2 if self.estimator == "score_function" else 1)

  @property
  def latent_family(self) -> str:
    """The distribution of the latent subsets: "exactly_k" or "gumbel_topk"."""
    if self.estimator == "score_function":
      return self.family or "exactly_k"
    return "exactly_k" if self.estimator in EXACTLY_K_ESTIMATORS else "gumbel_topk"
