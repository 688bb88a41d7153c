"""The four synthetic data sets of L2X (Chen et al., ICML 2018), generated with a seed.

Each row has ten features `X ~ N(0, I_10)` and the true probability `p = P(y = 1 | X)`; the
relevant features are known, so an explainer's ranking of the features can be scored.

- `xor`: `p = 1 / (1 + exp(X1 X2))`; relevant {X1, X2}.
- `orange_skin`: `p = 1 / (1 + exp(sum_{i <= 4} Xi^2 - 4))`; relevant {X1..X4}.
- `nonlinear_additive`: `p = 1 / (1 + exp(-100 sin(0.2 X1) + |X2| + X3 + exp(-X4) - 2.4))`,
  the authors' code (the paper's text writes `-100 sin(2 X1) + 2 |X2|`); relevant {X1..X4}.
- `switch`: half the rows have `X10` shifted by +3 and follow `orange_skin` on X1..X4, the
  other half `X10` shifted by -3 and follow `nonlinear_additive` on X5..X8; relevant
  {X1..X4, X10} or {X5..X8, X10} per row. (The authors' code meant to move the additive
  half's features to X5..X8 with a swap that, through NumPy views, copies X1..X4 into X5..X8
  for every row instead; this module builds the data set the paper describes.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_FEATURES = 10
DATASETS = ("xor", "orange_skin", "nonlinear_additive", "switch")
# The number of features an explanation selects, as in the paper.
K = {"xor": 2, "orange_skin": 4, "nonlinear_additive": 4, "switch": 5}


@dataclasses.dataclass(frozen=True)
class Dataset:
  x: np.ndarray  # float32 [rows, 10]
  p: np.ndarray  # float32 [rows]: P(y = 1 | x)
  relevant: np.ndarray  # bool [rows, 10]: the features the label depends on

  @property
  def labels(self) -> np.ndarray:
    """The more probable class of each row (int32)."""
    return (self.p > 0.5).astype(np.int32)


def _sigmoid_of_minus(t: np.ndarray) -> np.ndarray:
  """1 / (1 + exp(t)), without overflow for large |t|."""
  return 0.5 * (1 - np.tanh(t / 2))


def _orange_skin(x: np.ndarray) -> np.ndarray:
  return _sigmoid_of_minus(np.sum(x[:, :4] ** 2, axis=1) - 4)


def _additive(x: np.ndarray) -> np.ndarray:
  t = -100 * np.sin(0.2 * x[:, 0]) + np.abs(x[:, 1]) + x[:, 2] + np.exp(-x[:, 3]) - 2.4
  return _sigmoid_of_minus(t)


def make(name: str, rows: int, seed: int) -> Dataset:
  """`rows` rows of data set `name`, a function of `seed` alone."""
  if name not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}; got {name!r}.")
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((rows, NUM_FEATURES))
  relevant = np.zeros((rows, NUM_FEATURES), bool)
  if name == "xor":
    p = _sigmoid_of_minus(x[:, 0] * x[:, 1])
    relevant[:, :2] = True
  elif name == "orange_skin":
    p = _orange_skin(x)
    relevant[:, :4] = True
  elif name == "nonlinear_additive":
    p = _additive(x)
    relevant[:, :4] = True
  else:
    orange = rng.permutation(rows) < rows // 2
    x[:, 9] += np.where(orange, 3.0, -3.0)
    p = np.where(orange, _orange_skin(x), _additive(x[:, 4:8]))
    relevant[:, 9] = True
    relevant[orange, :4] = True
    relevant[~orange, 4:8] = True
  return Dataset(x.astype(np.float32), p.astype(np.float32), relevant)
