"""The epoch / step loop of a training run, for any task that follows `Task`.

`train_and_evaluate(task, config, workdir)` runs `config.num_epochs` epochs of
`task.steps_per_epoch` steps, validates at every epoch end (and at a time-budget stop),
keeps the best-validation state, and finally reports `task.test` of that state. It owns the
run's reliability: Orbax checkpoints (`checkpoints`), a clean stop on SIGINT / SIGTERM
(`stopping`), a bit-exact resume, the refusal to resume a changed configuration, the stop of
a run whose training loss becomes non-finite, `metrics.jsonl` and TensorBoard
(`metric_writers`), a progress bar and a time budget.

A run is exactly resumable when `task.train_step(state, epoch, step)` depends only on the
state and its position (its batch and noise are functions of the seed, epoch and step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from . import checkpoints as ckpt
from . import metric_writers, stopping


class Task(Protocol):
  """What an example provides to the loop."""

  steps_per_epoch: int
  val_metric: str  # the key of `validate`'s result that selects the best state
  higher_is_better: bool

  def describe(self) -> str:
    """A line for the log: data, sizes, devices."""

  def init_state(self) -> Any:
    """The initial training state (a Flax `TrainState` or any state dict with `step`)."""

  def train_step(self, state, epoch: int, step: int) -> tuple[Any, dict[str, float]]:
    """One optimiser step of `epoch` (from 0) at `step` (from 0 in the epoch); the metrics
    hold at least `loss` (host floats)."""

  def validate(self, state) -> dict[str, float]:
    """Validation metrics, including `val_metric`."""

  def test(self, state) -> dict[str, Any]:
    """Test metrics of the best-validation state."""


# Optional members of a task, read with getattr:
#   setup(): loads the data; called once a resume has been checked, with the signal handlers
#     installed (a signal while the data loads stops the run after its first step);
#   divergence_hint: a sentence appended to the divergence message;
#   summary_extras(): fields added to the final record.


@dataclasses.dataclass
class RunPosition:
  """Where a run stands; saved with every latest checkpoint and restored on resume."""

  epoch: int = 0  # completed epochs
  step_in_epoch: int = 0  # steps done in the epoch in progress
  best_value: float | None = None  # `val_metric` of the best state
  best_epoch: float | None = None  # epochs done at the best validation
  best_step: int | None = None
  train_time_s: float = 0.0
  wall_time_s: float = 0.0

  def epochs_done(self, steps_per_epoch: int) -> float:
    return self.epoch + self.step_in_epoch / steps_per_epoch


class Batches:
  """Each step's rows and noise key, functions of the seed, the epoch and the step only (so
  a resumed run sees the same batches and noise); the row order is drawn once per epoch."""

  def __init__(self, seed: int, size: int, batch_size: int, noise_key: jax.Array):
    self.seed, self.size, self.batch_size, self.noise_key = seed, size, batch_size, noise_key
    self.steps_per_epoch = size // batch_size
    self._order: tuple[int | None, np.ndarray | None] = (None, None)

  def __call__(self, epoch: int, step: int) -> tuple[np.ndarray, jax.Array]:
    if self._order[0] != epoch:
      self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
    rows = self._order[1][step * self.batch_size : (step + 1) * self.batch_size]
    return rows, jax.random.fold_in(self.noise_key, epoch * self.steps_per_epoch + step)


class Progress:
  """A tqdm bar when enabled, installed, and the output is a terminal; else silent."""

  def __init__(self, total: int, initial: int, desc: str, enabled: bool):
    self.bar = None
    if enabled and sys.stdout.isatty():
      try:
        from tqdm.auto import tqdm
      except ImportError:  # tqdm is optional: without it the log has the epoch lines only
        return
      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stdout)

  def update(self, loss: float) -> None:
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _print_flush(message: str) -> None:
  print(message, flush=True)


def train_and_evaluate(
  task: Task,
  config,
  workdir: str | pathlib.Path,
  *,
  resume: bool = False,
  log: Callable[[str], None] = _print_flush,
  log_every_steps: int = 20,
) -> dict[str, Any]:
  """Trains `task`, keeps its best-validation state and returns the final record.

  `config` is the example's frozen dataclass; the loop reads `num_epochs`, `time_budget_s`
  (None: none), `checkpoint_every_steps` (None: epoch ends only) and `progress`.

  Raises:
    stopping.TrainingInterrupted: on SIGINT or SIGTERM, after saving the latest state.
    checkpoints.ConfigMismatchError: resuming with a configuration that differs from the
      saved one in a field that is not resumable.
  """
  if config.num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1; got {config.num_epochs}.")
  every = config.checkpoint_every_steps
  if every is not None and every < 1:
    raise ValueError(f"checkpoint_every_steps must be >= 1 or None; got {every}.")
  workdir = pathlib.Path(workdir)
  with stopping.handle_signals() as stop, contextlib.ExitStack() as cleanup:
    return _Run(task, config, workdir, resume, log, stop, cleanup, log_every_steps).run()


class _Run:
  """One call of `train_and_evaluate`: the pieces of the loop, in the order they run."""

  def __init__(self, task, config, workdir, resume, log, stop, cleanup, log_every_steps):
    self.task, self.config, self.workdir, self.log, self.stop = task, config, workdir, log, stop
    self.log_every_steps = log_every_steps
    self.t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    self.checkpoints = ckpt.Checkpoints(workdir, fresh=not resume)
    cleanup.callback(self.checkpoints.close)
    self.meta = self.checkpoints.latest_meta() if resume else None
    if self.meta is not None:
      ckpt.check_resumable(self.meta["config"], config, workdir)
    elif resume:
      log(f"no checkpoint in {workdir}: starting a new run")
    if hasattr(task, "setup"):
      task.setup()
    for line in task.describe().splitlines():
      log(line)
    self.state = task.init_state()
    self.position = RunPosition()
    if self.meta is not None:
      self.state, meta = self.checkpoints.restore_latest(self.state)
      saved = dict(meta["position"])
      if "best_val_accuracy" in saved:  # the dKNN example's checkpoints before the harness
        saved["best_value"] = saved.pop("best_val_accuracy")
      self.position = RunPosition(**saved)
      log(
        f"resumed at epoch {self.position.epoch + 1}, step {self.position.step_in_epoch} of "
        f"{task.steps_per_epoch} from {self.checkpoints.latest.directory}"
      )
    step = None if self.meta is None else int(jax.device_get(self.state.step))
    self.writer = metric_writers.MetricWriter(workdir, resume_step=step)
    cleanup.callback(self.writer.close)
    self.base_wall = self.position.wall_time_s
    self.out_of_time = False
    self.diverged_at = None

  def wall_time(self) -> float:
    return self.base_wall + time.perf_counter() - self.t_start

  def save_latest(self, **overrides) -> None:
    position = dict(dataclasses.asdict(self.position), wall_time_s=self.wall_time(), **overrides)
    meta = {"position": position, "config": dataclasses.asdict(self.config)}
    self.checkpoints.save_latest(self.state, meta)

  def run(self) -> dict[str, Any]:
    while self.position.epoch < self.config.num_epochs and not self.out_of_time:
      losses, loop_time = self.train_epoch()
      if self.diverged_at is not None:
        break
      if self.stop:
        self.save_latest()
        raise stopping.TrainingInterrupted(
          self.stop.signum,
          self.position.epoch + 1,
          self.position.step_in_epoch,
          self.task.steps_per_epoch,
        )
      self.end_epoch(losses, loop_time)
    return self.finish()

  def train_epoch(self) -> tuple[list[dict[str, float]], float]:
    """Steps until the epoch ends, a signal, the time budget or a non-finite loss."""
    task, position, config = self.task, self.position, self.config
    every = config.checkpoint_every_steps
    records: list[dict[str, float]] = []
    progress = Progress(
      task.steps_per_epoch, position.step_in_epoch, f"epoch {position.epoch + 1}", config.progress
    )
    t_loop = time.perf_counter()
    try:
      for i in range(position.step_in_epoch, task.steps_per_epoch):
        self.state, metrics = task.train_step(self.state, position.epoch, i)
        if not np.isfinite(metrics["loss"]):
          self.diverged_at = int(jax.device_get(self.state.step))
          self.log(
            f"the training loss is {metrics['loss']} at step {self.diverged_at} (epoch "
            f"{position.epoch + 1}, step {i + 1} of {task.steps_per_epoch}): the run diverged; "
            "it stops without saving this state"
          )
          break
        records.append(metrics)
        progress.update(metrics["loss"])
        position.step_in_epoch = i + 1
        step = int(jax.device_get(self.state.step))
        if step % self.log_every_steps == 0:
          recent = [r["loss"] for r in records[-self.log_every_steps :]]
          self.writer.scalars(step, {"train/loss": float(np.mean(recent))})
        loop_time = time.perf_counter() - t_loop
        if self.stop:
          break
        if config.time_budget_s and position.train_time_s + loop_time > config.time_budget_s:
          self.out_of_time = True
          break
        if every and position.step_in_epoch % every == 0 and i + 1 < task.steps_per_epoch:
          self.save_latest(train_time_s=position.train_time_s + loop_time)
    finally:
      progress.close()
    loop_time = time.perf_counter() - t_loop
    position.train_time_s += loop_time
    return records, loop_time

  def end_epoch(self, records: list[dict[str, float]], loop_time: float) -> None:
    """Validates, keeps the best state, writes the epoch's record and saves."""
    task, position = self.task, self.position
    if position.step_in_epoch >= task.steps_per_epoch:
      position.epoch, position.step_in_epoch = position.epoch + 1, 0
    epochs_done = position.epochs_done(task.steps_per_epoch)
    step = int(jax.device_get(self.state.step))
    t_eval = time.perf_counter()
    val = task.validate(self.state)
    eval_time = time.perf_counter() - t_eval
    value = val[task.val_metric]
    best = position.best_value
    improved = best is None or (value > best if task.higher_is_better else value < best)
    if improved:
      position.best_value, position.best_epoch, position.best_step = value, epochs_done, step
      self.checkpoints.save_best(self.state, {"epoch": epochs_done, task.val_metric: value})
    train = {
      f"train_{name}": float(np.mean([r[name] for r in records]))
      for name in (records[0] if records else {})
    }
    entry = {
      "epoch": epochs_done,
      "step": step,
      **train,
      **val,
      "steps_per_s": round(len(records) / loop_time, 3) if records else None,
      "train_time_s": round(position.train_time_s, 2),
      "wall_time_s": round(self.wall_time(), 2),
      "eval_time_s": round(eval_time, 2),
      "best": improved,
    }
    self.writer.record(entry)
    shown = (*train, *val, "steps_per_s")
    self.writer.scalars(step, {f"epoch/{name}": entry[name] for name in shown})
    self.save_latest()
    shown = _shown({**train, **val})
    self.log(
      f"epoch {epochs_done:.2f}: {shown}{' (best)' if improved else ''}, "
      f"train time {position.train_time_s:.0f}s, eval {eval_time:.1f}s"
    )
    if self.stop:  # the signal came during the validation: the epoch's end is saved
      raise stopping.TrainingInterrupted(
        self.stop.signum, position.epoch, task.steps_per_epoch, task.steps_per_epoch
      )

  def finish(self) -> dict[str, Any]:
    """Tests the best-validation state and writes the final record."""
    task, position = self.task, self.position
    best = self.checkpoints.restore_best(self.state)
    test = {}
    if best is None:
      self.log("the run stopped before its first validation: no best state, no test metrics")
    else:
      test = task.test(best[0])
    summary = {
      "final": True,
      f"best_{task.val_metric}": position.best_value,
      "best_epoch": position.best_epoch,
      "best_step": position.best_step,
      **test,
      "epochs_done": position.epochs_done(task.steps_per_epoch),
      "steps": int(jax.device_get(self.state.step)),
      "train_time_s": round(position.train_time_s, 1),
      "wall_time_s": round(self.wall_time(), 1),
      "stopped_by_time_budget": self.out_of_time,
      "diverged_at_step": self.diverged_at,
      "config": dataclasses.asdict(self.config),
      "backend": jax.default_backend(),
      **(task.summary_extras() if hasattr(task, "summary_extras") else {}),
    }
    self.writer.record(summary)
    floats = {name: value for name, value in test.items() if isinstance(value, float)}
    self.writer.scalars(
      summary["steps"], {f"test/{name.removeprefix('test_')}": v for name, v in floats.items()}
    )
    if test:
      stopped = " (stopped by the time budget)" if self.out_of_time else ""
      if self.diverged_at is not None:
        stopped = f" (the run diverged at step {self.diverged_at})"
      self.log(
        f"test of the best-validation state (epoch {position.best_epoch:.2f}, step "
        f"{position.best_step}){stopped}: {_shown(floats)}"
      )
    return summary


def _shown(metrics: dict[str, float]) -> str:
  """`train_loss 0.1` -> `train loss 0.1000`, for the log."""
  return ", ".join(
    f"{name.replace('_', ' ')} {'n/a' if value is None else f'{value:.4f}'}"
    for name, value in metrics.items()
  )
