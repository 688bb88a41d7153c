"""Metrics of a training run: `metrics.jsonl` and TensorBoard event files in its workdir.

`metrics.jsonl` has one JSON record per validation (epoch end or time-budget stop) and one
final record per run. Resuming from a checkpoint first drops the records written after that
checkpoint and the earlier final record, so an extended or resumed run never holds two.
TensorBoard events (tensorboardX) go to `workdir/tensorboard`; a resumed run purges the
events after its checkpoint's step. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from typing import Any

import jax

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def read_records(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = pathlib.Path(workdir) / METRICS
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricWriter:
  """Appends records to `metrics.jsonl` and scalars to TensorBoard.

  Args:
    workdir: the run's directory.
    resume_step: the optimiser step of the checkpoint resumed from, or None for a new run
      (which removes the metrics of any earlier run in `workdir`).
  """

  def __init__(self, workdir: pathlib.Path, *, resume_step: int | None):
    self.path = pathlib.Path(workdir) / METRICS
    self.enabled = jax.process_index() == 0
    self.tensorboard = None
    if not self.enabled:
      return
    if resume_step is None:
      self.path.unlink(missing_ok=True)
      shutil.rmtree(self.path.parent / TENSORBOARD, ignore_errors=True)
    else:
      kept = [
        r
        for r in read_records(self.path.parent)
        if not r.get("final") and r.get("step", math.inf) <= resume_step
      ]
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
      tmp.replace(self.path)
    from tensorboardX import SummaryWriter

    self.tensorboard = SummaryWriter(
      str(self.path.parent / TENSORBOARD),
      purge_step=None if resume_step is None else resume_step + 1,
      flush_secs=30,
    )

  def record(self, entry: dict[str, Any]) -> None:
    """Appends one JSON record to `metrics.jsonl`."""
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(entry) + "\n")

  def scalars(self, step: int, values: dict[str, float | None]) -> None:
    """Writes TensorBoard scalars at an optimiser step (None values are skipped)."""
    if self.tensorboard is not None:
      for name, value in values.items():
        if value is not None:
          self.tensorboard.add_scalar(name, value, step)

  def flush(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.flush()

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()
      self.tensorboard = None
