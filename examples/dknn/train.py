"""Training a ConvNet embedding with the dKNN loss, in the style of Flax's examples.

`train_and_evaluate(config, workdir)` follows the protocol of the reference
(ermongroup/subsets `knn/run_dknn.py`): the training set is split into train /
validation with a fixed seed; each step draws `num_queries` queries and
`num_neighbors` candidate neighbours from two independent shuffles of the
training split; every epoch embeds the whole training split as the neighbour
bank and measures validation accuracy by exact kNN majority vote; the best
validation checkpoint is kept and its test accuracy reported. No sampling at
test time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from harness import checkpoints as ckpt
from harness import image_data as datasets
from harness import loop, metric_writers, stopping

import subsets_jax as sj

from . import parallel as sharding
from .configs import TrainConfig
from .models import ConvNet

_LOG_EVERY_STEPS = 20  # TensorBoard: mean training loss over this many steps
_print_flush = functools.partial(print, flush=True)


class TrainState(train_state.TrainState):
  """Flax TrainState; `step` counts optimiser steps."""


@dataclasses.dataclass(frozen=True)
class Splits:
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  source: str


def make_splits(data: datasets.Dataset, config: TrainConfig) -> Splits:
  """Fixed-seed train / validation split of the training set (test set untouched)."""
  num = len(data.train_labels)
  order = np.random.default_rng(config.split_seed).permutation(num)
  num_val = config.validation_size or round(num / 12)
  if not 1 <= num_val < num:
    raise ValueError(f"validation_size must be in [1, {num}); got {num_val}.")
  val, train = order[:num_val], order[num_val:]
  if config.max_train_examples:
    train = train[: config.max_train_examples]
  test = slice(None, config.max_test_examples)
  return Splits(
    data.train_images[train],
    data.train_labels[train],
    data.train_images[val],
    data.train_labels[val],
    data.test_images[test],
    data.test_labels[test],
    data.num_classes,
    data.source,
  )


@functools.lru_cache(maxsize=16)
def make_model(image_shape: tuple[int, ...]) -> ConvNet:
  """The ConvNet for images of `image_shape`; one object per shape (see `make_optimizer`)."""
  # The reference net needs 28x28 inputs with VALID padding; smaller images use SAME.
  return ConvNet(padding="VALID" if min(image_shape[:2]) >= 28 else "SAME")


@functools.lru_cache(maxsize=16)
def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch-style SGD: weight decay added to the gradient before momentum.

  One object per (config, steps_per_epoch): the optimiser is a static part of the
  TrainState, so reusing it lets the jitted steps of a later run in the same process
  reuse their compilations.
  """
  if config.lr_schedule == "constant":
    lr = config.learning_rate
  elif config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, config.num_epochs * steps_per_epoch)
  else:
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {config.lr_schedule!r}.")
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(lr, momentum=config.momentum),
  )


def create_train_state(
  key: jax.Array, config: TrainConfig, image_shape: tuple[int, ...], steps_per_epoch: int
) -> TrainState:
  """Initialises the ConvNet parameters and the optimiser state."""
  model = make_model(tuple(image_shape))
  params = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
  return TrainState.create(
    apply_fn=model.apply, params=params, tx=make_optimizer(config, steps_per_epoch)
  )


def _embed_pair(apply_fn, params, queries, neighbors, separate: bool):
  """Embeddings of the queries and of the neighbours: one batch, or two independent passes."""
  if separate:
    return apply_fn({"params": params}, queries), apply_fn({"params": params}, neighbors)
  emb = apply_fn({"params": params}, jnp.concatenate([queries, neighbors]))
  return emb[: queries.shape[0]], emb[queries.shape[0] :]


def prefers_separate_passes(mesh) -> bool:
  """Whether `train_step(..., separate_passes=True)` is the better choice on `mesh`.

  True for a single CPU device: XLA:CPU then runs the two independent passes side by side
  on its threads. With several devices, or on accelerators, one batch means fewer and
  larger kernels.
  """
  return mesh.size == 1 and mesh.devices.flat[0].platform == "cpu"


def train_step(
  state,
  batch,
  key,
  tau,
  *,
  k,
  num_samples=1,
  estimator="relaxed",
  lam=10.0,
  separate_passes=False,
):
  """One SGD step on the dKNN loss averaged over `num_samples` Gumbel draws (vmapped).

  Args:
    state: the TrainState.
    batch: dict with `query_images [B, H, W, C]`, `query_labels [B]`,
      `neighbor_images [N, H, W, C]`, `neighbor_labels [N]`.
    key: PRNG key for this step's Gumbel noise.
    tau: temperature (traced: annealing it does not recompile).
    lam: I-MLE's lambda for estimator "imle" (traced).
    k, num_samples, estimator: static hyperparameters of the loss (`dknn_loss`).
    separate_passes: embed queries and neighbours in two independent forward
      passes instead of one batch (same values; see `prefers_separate_passes`).

  Returns:
    The new state and a dict of metrics: `loss` and `top_k_correctness`
    (fraction of relaxed top-k mass on same-class neighbours, `-loss / k`).
  """

  def loss_fn(params):
    query_emb, neighbor_emb = _embed_pair(
      state.apply_fn, params, batch["query_images"], batch["neighbor_images"], separate_passes
    )
    return sj.dknn_loss(
      key,
      query_emb,
      neighbor_emb,
      batch["query_labels"],
      batch["neighbor_labels"],
      k=k,
      tau=tau,
      num_samples=num_samples,
      estimator=estimator,
      lam=lam,
    )

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), {"loss": loss, "top_k_correctness": -loss / k}


train_step_jit = jax.jit(
  train_step,
  static_argnames=("k", "num_samples", "estimator", "separate_passes"),
  donate_argnums=0,
)


@jax.jit
def eval_step(state, images):
  """Embeddings `[B, embedding_dim]` of a batch of images."""
  return state.apply_fn({"params": state.params}, images)


def embed(state, images: np.ndarray, batch_size: int, mesh=None) -> jax.Array:
  """Embeds `images` in fixed-size batches (the last one padded: one compilation).

  With a `mesh`, each batch is split over its devices.
  """
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    if mesh is not None:
      chunk = sharding.shard_batch(chunk, mesh)
    out.append(eval_step(state, chunk)[: batch_size - pad])
  return jnp.concatenate(out)


def evaluate(
  state,
  bank_images,
  bank_labels,
  query_images,
  query_labels,
  *,
  k,
  num_classes,
  batch_size=1000,
  mesh=None,
) -> float:
  """kNN accuracy of `query_images` against the embedded bank (exact, no sampling).

  With a multi-device `mesh`, embedding is data-parallel and the bank is sharded
  across devices for the kNN search (merged exactly).
  """
  return evaluate_ks(
    state,
    bank_images,
    bank_labels,
    query_images,
    query_labels,
    ks=(k,),
    num_classes=num_classes,
    batch_size=batch_size,
    mesh=mesh,
  )[k]


def evaluate_ks(
  state,
  bank_images,
  bank_labels,
  query_images,
  query_labels,
  *,
  ks,
  num_classes,
  batch_size=1000,
  mesh=None,
) -> dict[int, float]:
  """`evaluate` for several vote sizes `ks` from one embedding: {k: accuracy}."""
  mesh = mesh if mesh is not None and mesh.size > 1 else None
  bank = embed(state, bank_images, batch_size, mesh)
  queries = embed(state, query_images, batch_size, mesh)
  labels = jnp.asarray(bank_labels)
  accuracies = {}
  for k in ks:
    pred = sj.knn_predict(queries, bank, labels, k=k, num_classes=num_classes, mesh=mesh)
    accuracies[k] = float(np.mean(np.asarray(pred) == query_labels))
  return accuracies


def epoch_length(num_train: int, config: TrainConfig) -> int:
  """Steps in one pass over the training split (the larger of the two batches sets it)."""
  return num_train // max(config.num_queries, config.num_neighbors)


def random_shifts(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Each image of `[B, H, W, C]` translated by its own random (dy, dx) in
  `[-max_shift, max_shift]`, with zeros shifted in (augmentation for training batches).
  """
  b, h, w = images.shape[:3]
  shifts = rng.integers(-max_shift, max_shift + 1, size=(b, 2))
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  out = np.empty_like(images)
  for j, (dy, dx) in enumerate(shifts):
    out[j] = padded[j, max_shift - dy : max_shift - dy + h, max_shift - dx : max_shift - dx + w]
  return out


def epoch_batches(num_train: int, config: TrainConfig, epoch: int):
  """Query and neighbour index batches of one epoch: two independent shuffles."""
  rng = np.random.default_rng([config.seed, epoch])
  queries, neighbors = rng.permutation(num_train), rng.permutation(num_train)
  for i in range(epoch_length(num_train, config)):
    yield (
      queries[i * config.num_queries : (i + 1) * config.num_queries],
      neighbors[i * config.num_neighbors : (i + 1) * config.num_neighbors],
    )


@dataclasses.dataclass
class RunPosition:
  """Where a run stands; saved with every latest checkpoint (`meta`) and restored on resume.

  Times are summed over the processes of the run (a resumed run adds its own), each counted
  up to the checkpoint that the next one resumed from; training time is part of wall time.
  """

  epoch: int = 0  # completed epochs
  step_in_epoch: int = 0  # steps done in the epoch in progress
  best_val_accuracy: float | None = None
  best_epoch: float | None = None  # epochs done at the best validation (fractional mid-epoch)
  best_step: int | None = None
  train_time_s: float = 0.0
  wall_time_s: float = 0.0

  def epochs_done(self, steps_per_epoch: int) -> float:
    return self.epoch + self.step_in_epoch / steps_per_epoch


def _check_run_config(config: TrainConfig) -> None:
  if config.num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1; got {config.num_epochs}.")
  if config.checkpoint_every_steps is not None and config.checkpoint_every_steps < 1:
    raise ValueError(
      f"checkpoint_every_steps must be >= 1 or None; got {config.checkpoint_every_steps}."
    )
  if any(not isinstance(k, int) or k < 1 for k in config.eval_k_grid):
    raise ValueError(f"eval_k_grid must hold integers >= 1; got {config.eval_k_grid}.")


def train_and_evaluate(
  config: TrainConfig,
  workdir: str | pathlib.Path,
  *,
  resume: bool = False,
  log: Callable[[str], None] = _print_flush,
) -> dict[str, Any]:
  """Trains, keeps the best-validation checkpoint, reports its test accuracy.

  Writes to `workdir`: `metrics.jsonl` and TensorBoard events (`metric_writers`), and the
  Orbax checkpoints `checkpoints/latest` (every `checkpoint_every_steps` steps, every epoch
  end, a time-budget stop, SIGINT/SIGTERM) and `checkpoints/best` (`checkpoints`). A new run
  replaces any earlier run in `workdir`. With `resume=True` the run continues from the
  latest checkpoint bit for bit as if uninterrupted (data order and noise depend only on
  seed, epoch and step) after checking that the configuration only differs in the fields
  `checkpoints.RESUMABLE_FIELDS`; with no checkpoint it says so and starts a new run.

  A non-finite training loss stops the run at that step: nothing of the diverged state is
  saved, and the final record names the step (`diverged_at_step`, otherwise None) and
  reports the best-validation checkpoint's test accuracy if a validation came before.

  Returns:
    The final record: best validation accuracy and its epoch, test accuracy, times.

  Raises:
    stopping.TrainingInterrupted: on SIGINT or SIGTERM, after saving the latest state.
    checkpoints.ConfigMismatchError: resuming with a configuration that differs from the
      saved one in a field that changes the model, the data or the random streams.
    image_data.DataUnavailableError: no route provides the data set.
  """
  _check_run_config(config)
  # From the start: a signal while the data loads or the step compiles stops after one step.
  with stopping.handle_signals() as stop, contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, pathlib.Path(workdir), resume, log, stop, cleanup)


def _train_and_evaluate(config, workdir, resume, log, stop, cleanup) -> dict[str, Any]:
  workdir.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  checkpoints = ckpt.Checkpoints(workdir, fresh=not resume)
  cleanup.callback(checkpoints.close)
  meta = checkpoints.latest_meta() if resume else None
  if meta is not None:
    ckpt.check_resumable(meta["config"], config, workdir)
  elif resume:
    log(f"no checkpoint in {workdir}: starting a new run")

  data = datasets.load(config.dataset, data_dir=config.data_dir)
  splits = make_splits(data, config)
  num_train = len(splits.train_labels)
  steps_per_epoch = epoch_length(num_train, config)
  if steps_per_epoch < 1:
    raise ValueError("the training split is smaller than one batch of queries/neighbours.")
  log(
    f"data: {splits.source}; train {num_train}, validation {len(splits.val_labels)}, "
    f"test {len(splits.test_labels)}; {steps_per_epoch} steps/epoch"
  )
  # Data parallel: parameters replicated, each step's queries and neighbours split.
  mesh = sharding.data_mesh(
    config.num_devices, divides=(config.num_queries, config.num_neighbors, config.eval_batch_size)
  )
  log(f"devices: {mesh.size} x {mesh.devices.flat[0].platform} (data parallel)")

  root = jax.random.key(config.seed)
  state = create_train_state(
    jax.random.fold_in(root, 0), config, splits.train_images.shape[1:], steps_per_epoch
  )
  state = sharding.replicate(state, mesh)
  noise_key = jax.random.fold_in(root, 1)
  position = RunPosition()
  if meta is not None:
    state, meta = checkpoints.restore_latest(state)
    position = RunPosition(**meta["position"])
    log(
      f"resumed at epoch {position.epoch + 1}, step {position.step_in_epoch} of "
      f"{steps_per_epoch} from {checkpoints.latest.directory}"
    )
  writer = metric_writers.MetricWriter(
    workdir, resume_step=None if meta is None else int(jax.device_get(state.step))
  )
  cleanup.callback(writer.close)
  base_wall = position.wall_time_s

  def wall_time():
    return base_wall + time.perf_counter() - t_start

  def save_latest(state, **overrides):
    saved = dict(dataclasses.asdict(position), wall_time_s=wall_time(), **overrides)
    checkpoints.save_latest(state, {"position": saved, "config": dataclasses.asdict(config)})

  vote_k = config.eval_k or config.k  # validations vote with it, and the test without a grid

  def knn_accuracy(state, images, labels, ks=(vote_k,)):
    """{k: accuracy}; the training split is the neighbour bank, as in the reference."""
    return evaluate_ks(
      state,
      splits.train_images,
      splits.train_labels,
      images,
      labels,
      ks=ks,
      num_classes=splits.num_classes,
      batch_size=config.eval_batch_size,
      mesh=mesh,
    )

  tau = jnp.float32(config.tau)
  separate_passes = prefers_separate_passes(mesh)
  every = config.checkpoint_every_steps
  out_of_time = False
  diverged_at = None  # the step whose training loss is not finite
  while position.epoch < config.num_epochs and not out_of_time:
    losses, correctness = [], []
    progress = loop.Progress(
      steps_per_epoch, position.step_in_epoch, f"epoch {position.epoch + 1}", config.progress
    )
    t_loop = time.perf_counter()
    try:
      for i, (qi, ni) in enumerate(epoch_batches(num_train, config, position.epoch)):
        if i < position.step_in_epoch:
          continue
        queries, neighbors = splits.train_images[qi], splits.train_images[ni]
        if config.augment_shift:
          rng = np.random.default_rng([config.seed, position.epoch, i])
          queries = random_shifts(queries, config.augment_shift, rng)
          neighbors = random_shifts(neighbors, config.augment_shift, rng)
        batch = {
          "query_images": queries,
          "query_labels": splits.train_labels[qi],
          "neighbor_images": neighbors,
          "neighbor_labels": splits.train_labels[ni],
        }
        batch = sharding.shard_batch(batch, mesh)
        key = jax.random.fold_in(noise_key, position.epoch * steps_per_epoch + i)
        state, metrics = train_step_jit(
          state,
          batch,
          key,
          tau,
          k=config.k,
          num_samples=config.num_samples,
          estimator=config.estimator,
          lam=config.lam,
          separate_passes=separate_passes,
        )
        metrics = jax.device_get(metrics)
        if not np.isfinite(metrics["loss"]):
          diverged_at = int(state.step)
          log(
            f"the training loss is {float(metrics['loss'])} at step {diverged_at} (epoch "
            f"{position.epoch + 1}, step {i + 1} of {steps_per_epoch}): the run diverged; "
            "it stops without saving this state (try a lower --lr or a larger --tau)"
          )
          break
        losses.append(float(metrics["loss"]))
        correctness.append(float(metrics["top_k_correctness"]))
        progress.update(float(metrics["loss"]))
        position.step_in_epoch = i + 1
        step = int(state.step)
        if step % _LOG_EVERY_STEPS == 0:
          writer.scalars(step, {"train/loss": float(np.mean(losses[-_LOG_EVERY_STEPS:]))})
        loop_time = time.perf_counter() - t_loop
        if stop:
          break
        if config.time_budget_s and position.train_time_s + loop_time > config.time_budget_s:
          out_of_time = True
          break
        if every and position.step_in_epoch % every == 0 and i + 1 < steps_per_epoch:
          save_latest(state, train_time_s=position.train_time_s + loop_time)
    finally:
      progress.close()
    loop_time = time.perf_counter() - t_loop
    position.train_time_s += loop_time
    if diverged_at is not None:
      break
    if stop:
      save_latest(state)
      raise stopping.TrainingInterrupted(
        stop.signum, position.epoch + 1, position.step_in_epoch, steps_per_epoch
      )
    if position.step_in_epoch >= steps_per_epoch:
      position.epoch, position.step_in_epoch = position.epoch + 1, 0
    epochs_done = position.epochs_done(steps_per_epoch)
    step = int(state.step)
    t_eval = time.perf_counter()
    (val_acc,) = knn_accuracy(state, splits.val_images, splits.val_labels).values()
    eval_time = time.perf_counter() - t_eval
    improved = position.best_val_accuracy is None or val_acc > position.best_val_accuracy
    if improved:
      position.best_val_accuracy, position.best_epoch, position.best_step = (
        val_acc,
        epochs_done,
        step,
      )
      checkpoints.save_best(state, {"epoch": epochs_done, "val_accuracy": val_acc})
    steps_done = len(losses)
    entry = {
      "epoch": epochs_done,
      "step": step,
      "train_loss": float(np.mean(losses)) if losses else None,
      "train_top_k_correctness": float(np.mean(correctness)) if correctness else None,
      "val_accuracy": val_acc,
      "steps_per_s": round(steps_done / loop_time, 3) if steps_done else None,
      "train_time_s": round(position.train_time_s, 2),
      "wall_time_s": round(wall_time(), 2),
      "eval_time_s": round(eval_time, 2),
      "best": improved,
    }
    writer.record(entry)
    writer.scalars(
      step,
      {
        "epoch/train_loss": entry["train_loss"],
        "epoch/train_top_k_correctness": entry["train_top_k_correctness"],
        "epoch/val_accuracy": val_acc,
        "epoch/steps_per_s": entry["steps_per_s"],
      },
    )
    save_latest(state)
    log(
      f"epoch {epochs_done:.2f}: loss {_fmt(entry['train_loss'])}, "
      f"top-k correctness {_fmt(entry['train_top_k_correctness'])}, "
      f"val acc {val_acc:.4f}{' (best)' if improved else ''}, "
      f"train time {position.train_time_s:.0f}s, eval {eval_time:.1f}s"
    )
    if stop:  # the signal came during the validation: the epoch's end is saved
      raise stopping.TrainingInterrupted(
        stop.signum, position.epoch, steps_per_epoch, steps_per_epoch
      )

  best = checkpoints.restore_best(state)
  test_acc, test_k, val_by_k = None, vote_k, None
  if best is None:
    log("the run stopped before its first validation: no best checkpoint, no test accuracy")
  else:
    if config.eval_k_grid:
      val_by_k = knn_accuracy(best[0], splits.val_images, splits.val_labels, config.eval_k_grid)
      # The highest validation accuracy; a tie goes to the smaller k.
      test_k = max(sorted(val_by_k), key=val_by_k.get)
      log(
        "validation accuracy of the best checkpoint by vote k: "
        + ", ".join(f"{k}: {acc:.4f}" for k, acc in val_by_k.items())
        + f"; the test votes with k = {test_k}"
      )
    (test_acc,) = knn_accuracy(best[0], splits.test_images, splits.test_labels, (test_k,)).values()
  summary = {
    "final": True,
    "dataset": config.dataset,
    "best_val_accuracy": position.best_val_accuracy,
    "best_epoch": position.best_epoch,
    "best_step": position.best_step,
    "test_accuracy": test_acc,
    "test_eval_k": test_k,
    "val_accuracy_by_eval_k": val_by_k and {str(k): acc for k, acc in val_by_k.items()},
    "epochs_done": position.epochs_done(steps_per_epoch),
    "steps": int(state.step),
    "train_time_s": round(position.train_time_s, 1),
    "wall_time_s": round(wall_time(), 1),
    "stopped_by_time_budget": out_of_time,
    "diverged_at_step": diverged_at,
    "config": dataclasses.asdict(config),
    "backend": jax.default_backend(),
    "devices": mesh.size,
  }
  writer.record(summary)
  if test_acc is not None:
    writer.scalars(summary["steps"], {"test/accuracy": test_acc})
    stopped = " (stopped by the time budget)" if out_of_time else ""
    if diverged_at is not None:
      stopped = f" (the run diverged at step {diverged_at})"
    log(
      f"test accuracy of the best-validation checkpoint (epoch {position.best_epoch:.2f}, "
      f"step {position.best_step}){stopped}: {test_acc:.4f}"
    )
  return summary


def _fmt(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.4f}"
