"""Checkpoints of a training run through Orbax: the latest state and the best-validation state.

`workdir/checkpoints/latest` holds the newest training state (written every few hundred steps,
at every epoch end, at a time-budget stop and on SIGINT/SIGTERM) with its position in the run;
`workdir/checkpoints/best` holds the state of the best validation accuracy. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so an interrupted write
never replaces a good checkpoint, and every process of a multi-host run takes part in each
save and restore (all of them must call the same methods in the same order).
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CHECKPOINTS = "checkpoints"
# Fields that may differ between a run and its resumption: they change neither the model,
# nor the data, nor the random streams (the device count only changes float rounding). A
# configuration class adds its own in a class attribute `extra_resumable_fields`.
RESUMABLE_FIELDS = frozenset(
  {
    "num_epochs",
    "time_budget_s",
    "progress",
    "num_devices",
    "eval_batch_size",
    "checkpoint_every_steps",
  }
)


class ConfigMismatchError(ValueError):
  """A resumed run's configuration differs from the saved one in a field that matters."""


def config_differences(saved: dict[str, Any], config) -> list[str]:
  """The fields of the dataclass `config` that may not differ from the `saved` one, described.

  `num_epochs` may change unless the learning-rate schedule depends on it (cosine).
  """
  current = dataclasses.asdict(config)
  # A field that a run's version did not have yet held its default.
  saved = {**dataclasses.asdict(type(config)()), **saved}
  resumable = RESUMABLE_FIELDS | getattr(config, "extra_resumable_fields", frozenset())
  fixed = set(current) - resumable
  if getattr(config, "lr_schedule", None) == "cosine" or saved.get("lr_schedule") == "cosine":
    fixed.add("num_epochs")  # the cosine schedule spans num_epochs
  return [
    f"{name}: saved {saved.get(name, '<absent>')!r}, now {current.get(name, '<absent>')!r}"
    for name in sorted(fixed | (set(saved) - set(current)))
    if saved.get(name, "<absent>") != current.get(name, "<absent>")
  ]


def check_resumable(saved: dict[str, Any], config, workdir: pathlib.Path) -> None:
  """Raises `ConfigMismatchError` naming every field that differs and its two values."""
  differences = config_differences(saved, config)
  if differences:
    raise ConfigMismatchError(
      f"cannot resume the run in {workdir}: its configuration differs in "
      + "; ".join(differences)
      + ". Pass the run's values, or start a new run without --resume (or in another --workdir)."
    )


class Checkpoints:
  """The latest and best checkpoints of one run in `workdir/checkpoints`.

  Each checkpoint holds the training state (a Flax state dict) and a JSON dict `meta`
  (position in the run, timings, the configuration).
  """

  def __init__(self, workdir: pathlib.Path, *, fresh: bool):
    self.root = (workdir / CHECKPOINTS).absolute()  # Orbax takes absolute paths only
    if fresh:
      if jax.process_index() == 0:
        shutil.rmtree(self.root, ignore_errors=True)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("harness: old checkpoints removed")
    # Two kept in `latest`: the previous one survives while a newer one is written.
    self.latest = self._manager("latest", max_to_keep=2)
    self.best = self._manager("best", max_to_keep=1)

  def _manager(self, name: str, *, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(self.root / name, options=options)

  @staticmethod
  def _save(manager: ocp.CheckpointManager, state, meta: dict[str, Any]) -> None:
    step = int(jax.device_get(state.step))
    if step in manager.all_steps():
      # The same step saved again (after its validation): replace it; an older one remains.
      manager.delete(step)
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  @staticmethod
  def _restore(manager: ocp.CheckpointManager, like) -> tuple[Any, dict[str, Any]] | None:
    step = manager.latest_step()
    if step is None:
      return None
    target = flax.serialization.to_state_dict(like)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return flax.serialization.from_state_dict(like, restored["state"]), dict(restored["meta"])

  def save_latest(self, state, meta: dict[str, Any]) -> None:
    self._save(self.latest, state, meta)

  def save_best(self, state, meta: dict[str, Any]) -> None:
    self._save(self.best, state, meta)

  def latest_meta(self) -> dict[str, Any] | None:
    """The `meta` of the latest checkpoint (no arrays read); None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore_latest(self, like) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the latest checkpoint, laid out as `like`; None when there is none."""
    return self._restore(self.latest, like)

  def restore_best(self, like) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the best-validation checkpoint, laid out as `like`; None if none."""
    return self._restore(self.best, like)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
