"""The configuration of an L2X run; every default is written here only."""

from __future__ import annotations

import dataclasses

import subsets_jax as sj

from . import data


def _field(default, text: str, choices=None):
  return dataclasses.field(default=default, metadata={"help": text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of a run; the defaults are the paper's protocol on XOR with L2X."""

  dataset: str = _field("xor", "synthetic data set", data.DATASETS)
  estimator: str = _field("l2x", "gradient estimator of the selection", sj.ESTIMATORS)
  k: int | None = _field(None, "features selected; None: the data set's (2, 4, 4, 5)")
  tau: float = _field(0.1, "temperature of relaxed, straight_through and l2x")
  lam: float = _field(1000.0, "I-MLE's lambda (its step to the target distribution)")
  num_samples: int | None = _field(None, "draws per step; None: 1 (2 for score_function)")
  family: str | None = _field(None, "distribution of score_function", sj.FAMILIES)
  learning_rate: float = _field(1e-3, "Adam learning rate")
  weight_decay: float = _field(1e-3, "coefficient of the L2 penalty on every Dense kernel")
  batch_size: int = _field(1000, "rows per step")
  num_epochs: int = _field(1, "epochs over the training rows")
  train_size: int = _field(1_000_000, "training rows")
  val_size: int = _field(100_000, "validation rows (they choose the best state)")
  explain_size: int = _field(100_000, "rows explained for the metrics")
  data_seed: int = _field(0, "the data sets (the same for every --seed)")
  seed: int = _field(0, "initialisation, batch order and noise")
  eval_batch_size: int = _field(10_000, "rows per evaluation batch")
  time_budget_s: float | None = _field(None, "stop training after this many seconds")
  checkpoint_every_steps: int | None = _field(200, "save the latest state this often")
  progress: bool = _field(True, "a progress bar on a terminal")

  @property
  def subset_size(self) -> int:
    return self.k or data.K[self.dataset]

  @property
  def draws(self) -> int:
    return self.num_samples or (2 if self.estimator == "score_function" else 1)

  @property
  def activation(self) -> str:
    return "relu" if self.dataset in ("xor", "orange_skin") else "selu"
