"""MNIST for the VAE: 784 pixels scaled to [0, 1], not binarised (the notebook's targets)."""

from __future__ import annotations

import dataclasses

import numpy as np
from harness import image_data


@dataclasses.dataclass(frozen=True)
class Splits:
  train: np.ndarray  # [N, 784] float32 in [0, 1]
  val: np.ndarray  # the held-out training images, or the test images when none are held out
  test: np.ndarray
  source: str


def load(
  *,
  train_size: int | None,
  val_size: int,
  test_size: int | None = None,
  data_dir: str | None = None,
  use_tfds: bool = True,
) -> Splits:
  """The training images (the first `train_size` after the last `val_size` are held out)
  and the first `test_size` test images."""
  data = image_data.load("mnist", data_dir=data_dir, use_tfds=use_tfds)
  train = data.train_images.reshape(len(data.train_images), -1)
  test = data.test_images.reshape(len(data.test_images), -1)
  if test_size is not None:
    if not 1 <= test_size <= len(test):
      raise ValueError(f"test_size must be in [1, {len(test)}]; got {test_size}.")
    test = test[:test_size]
  if not 0 <= val_size < len(train):
    raise ValueError(f"val_size must be in [0, {len(train)}); got {val_size}.")
  val = train[len(train) - val_size :] if val_size else test
  train = train[: len(train) - val_size]
  if train_size is not None:
    if not 1 <= train_size <= len(train):
      raise ValueError(f"train_size must be in [1, {len(train)}]; got {train_size}.")
    train = train[:train_size]
  return Splits(train=train, val=val, test=test, source=data.source)
